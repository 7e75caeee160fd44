"""A progress bar with throughput and ETA for long passes (evaluation, sampling, token export).

Why: a 50k-image FID pass or an ImageNet token export takes minutes to hours; a researcher needs
to know it is moving and when it ends, without a progress-bar dependency. On a terminal one line
is redrawn in place; into a log file (not a TTY) a line is appended at most every `every_s`
seconds and at the end. Process 0 only unless `enabled` says otherwise. E.g.

  [rfid/recon] [#####...............] 12800/50000 (25.6%) 412.3 ex/s, elapsed 0:00:31, ETA 0:01:30
"""
import datetime
import sys
import time
from typing import Optional, TextIO

import jax


BAR_WIDTH = 20


def _hms(seconds: float) -> str:
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
    eta_s = _hms(eta) if eta == eta else "?"
    filled = int(BAR_WIDTH * min(max(pct, 0.0), 100.0) / 100.0)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return (f"[{self.name}] [{bar}] {done}/{self.total} ({pct:.1f}%) {rate:.1f} ex/s, "
            f"elapsed {_hms(elapsed)}, ETA {eta_s}")

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
