"""Console progress with throughput and ETA: long passes (`Progress`) and training (`StepLine`).

Why: a 50k-image FID pass, an ImageNet token export or a training run takes minutes to days; a
researcher needs to know it is moving and when it ends, without a progress-bar dependency and
without turning on absl INFO logging.

`Progress` (evaluation, sampling, token export): on a terminal one line is redrawn in place; into
a log file (not a TTY) a line is appended at most every `every_s` seconds and at the end:

  [rfid/recon] [#####...............] 12800/50000 (25.6%) 412.3 ex/s, elapsed 0:00:31, ETA 0:01:30

`StepLine` (both trainers, through core/writers.Writer): one line on stdout per log interval,

  step 120/600 | l1 0.0712 | 27.4 img/s, 3.42 /device | MFU 31.5% | 3.42 steps/s | ETA 0:02:21

steps/s over the last interval, without the first step's compilation and without the time spent
in evaluation or sampling (`exclude`); the ETA is the remaining steps at that rate (checkpoint
writes included: it is a wall-clock forecast). The throughput part is the trainers' meter
(`core/throughput.Meter`, the same figures as TensorBoard's `throughput/*` and `perf/mfu`, which
leave checkpoint writes out too): images/s in stage 1, tokens/s in stage 2, global and per device,
and MFU where the device's peak is known. Process 0 only unless `enabled` says otherwise.
"""
import datetime
import sys
import time
from typing import Optional, Sequence, TextIO

import jax


BAR_WIDTH = 20


def hms(seconds: float) -> str:
  """0:02:21 (H:MM:SS; days as "1 day, 2:03:04")."""
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))



class Progress:
  """Call with the number of examples done so far; prints rate and ETA."""

  def __init__(self, name: str, total: int, *, every_s: float = 10.0,
               stream: Optional[TextIO] = None, enabled: Optional[bool] = None):
    self.name, self.total, self.every_s = name, max(int(total), 0), every_s
    self.stream = sys.stderr if stream is None else stream
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.start = time.perf_counter()
    self._last = -float("inf")
    self.lines = 0
    isatty = getattr(self.stream, "isatty", None)
    self._tty = bool(isatty and isatty())

  def line(self, done: int) -> str:
    elapsed = time.perf_counter() - self.start
    rate = done / elapsed if elapsed > 0 else 0.0
    pct = 100.0 * done / self.total if self.total else 100.0
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    eta_s = hms(eta) if eta == eta else "?"
    filled = int(BAR_WIDTH * min(max(pct, 0.0), 100.0) / 100.0)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return (f"[{self.name}] [{bar}] {done}/{self.total} ({pct:.1f}%) {rate:.1f} ex/s, "
            f"elapsed {hms(elapsed)}, ETA {eta_s}")

  def __call__(self, done: int) -> None:
    now = time.perf_counter()
    if not self.enabled or (done < self.total and now - self._last < self.every_s):
      return
    self._last = now
    self.lines += 1
    if self._tty:  # redraw in place; a newline once finished
      print("\r" + self.line(done), end="\n" if done >= self.total else "", file=self.stream,
            flush=True)
    else:
      print(self.line(done), file=self.stream, flush=True)

  @property
  def seconds(self) -> float:
    return time.perf_counter() - self.start


def throughput_parts(rates: dict) -> list:
  """The console's throughput fields from a meter's values: tokens/s when the run counts tokens
  (stage 2), else images/s, each global and per device; then MFU when known."""
  out = []
  for unit, name in (("tok/s", "tokens_per_s"), ("img/s", "images_per_s")):
    if f"throughput/{name}" in rates:
      out.append(f"{rates[f'throughput/{name}']:.3g} {unit}, "
                 f"{rates[f'throughput/{name}_per_device']:.3g} /device")
      break
  if "perf/mfu" in rates:
    out.append(f"MFU {100 * rates['perf/mfu']:.1f}%")
  return out


class StepLine:
  """One console line per training log interval: step/total, chosen metrics, steps/s, ETA."""

  def __init__(self, total_steps: int, *, stream: Optional[TextIO] = None,
               enabled: Optional[bool] = None, clock=time.perf_counter):
    self.total = int(total_steps)
    self.stream = stream  # None: sys.stdout at print time (pytest's capsys swaps it)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.clock = clock
    self._mark: Optional[tuple[int, float]] = None  # (step, time) the current interval starts at
    self._excluded = 0.0
    self.lines = 0

  def tick(self, step: int) -> None:
    """Called after every step is dispatched; only the first call matters (it follows the first
    step's compilation, which the rate leaves out)."""
    if self._mark is None:
      self._mark = (step, self.clock())

  def exclude(self, seconds: float) -> None:
    """Time inside the current interval that is not training (evaluation, sampling)."""
    self._excluded += seconds

  def rate(self, step: int) -> Optional[float]:
    """Steps/s since the last line (None when no time or no step has passed since it)."""
    if self._mark is None:
      return None
    steps, secs = step - self._mark[0], self.clock() - self._mark[1] - self._excluded
    return steps / secs if steps > 0 and secs > 0 else None

  def line(self, step: int, metrics: dict, keys: Sequence[str] = (),
           rates: Optional[dict] = None) -> str:
    parts = [f"step {step}/{self.total}"]
    for k in keys:
      if k in metrics:
        name = k[len("loss/"):] if k.startswith("loss/") else k
        parts.append(f"{name} {float(metrics[k]):.4g}")
    parts += throughput_parts(rates or {})
    r = self.rate(step)
    parts.append(f"{r:.3g} steps/s" if r else "-- steps/s")
    parts.append(f"ETA {hms((self.total - step) / r)}" if r else "ETA --")
    return " | ".join(parts)

  def __call__(self, step: int, metrics: dict, keys: Sequence[str] = (),
               rates: Optional[dict] = None) -> Optional[str]:
    """Prints (process 0) and returns the line; the next interval starts now. `rates`: the
    meter's `throughput/*` / `perf/*` values of this interval (none: no throughput part)."""
    text = self.line(step, metrics, keys, rates)
    if self._mark is not None:
      self._mark, self._excluded = (step, self.clock()), 0.0
    if not self.enabled:
      return None
    print(text, file=self.stream or sys.stdout, flush=True)
    self.lines += 1
    return text
