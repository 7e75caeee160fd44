"""The only module that imports CLU writers/periodic actions (they import TensorFlow).

TensorBoard scalars and images, ReportProgress (steps/s, ETA), the parameter overview, and image
grids written both to TensorBoard and as PNG files under `<workdir>/images/`. Non-zero processes
only log. `train_scalars` also prints the console step line (core/progress.StepLine) on process 0.
The workdir may be a URL (gs://...): TensorFlow and `core/files` write there directly. Every
process must call `parameter_overview` (its statistics are one sharded reduction).
"""
import contextlib
import dataclasses
import time
from typing import Optional, Sequence

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
import jax.numpy as jnp
import numpy as np

from maskvq_jax.core import files

from maskvq_jax.core import progress


class Writer:
  """Scalars, images and progress for one run."""

  def __init__(self, workdir: str, *, total_steps: int, log_every: int, profile: bool = False):
    self.workdir = workdir
    self.is_main = jax.process_index() == 0
    self.w = metric_writers.create_default_writer(workdir, just_logging=not self.is_main,
                                                  asynchronous=True)
    self.hooks = []
    self.console = progress.StepLine(total_steps, enabled=self.is_main)
    if self.is_main:
      self.hooks.append(periodic_actions.ReportProgress(num_train_steps=total_steps, writer=self.w,
                                                        every_steps=log_every))
      if profile:
        self.hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5,
                                                   profile_duration_ms=None, every_secs=None))

  def tick(self, step: int):
    self.console.tick(step)
    for h in self.hooks:
      h(step)

  @contextlib.contextmanager
  def timed(self, name: str):
    """Excludes e.g. evaluation time from the steps/s reports (TensorBoard and console)."""
    t = time.perf_counter()
    try:
      with self.hooks[0].timed(name) if self.hooks else _Null():
        yield
    finally:
      self.console.exclude(time.perf_counter() - t)

  def scalars(self, step: int, values: dict):
    self.w.write_scalars(step, {k: float(v) for k, v in values.items()})

  def train_scalars(self, step: int, metrics: dict, console: Sequence[str] = (),
                    rates: Optional[dict] = None):
    """`train/<k>` scalars, the meter's `rates` (throughput/*, perf/*) as they are, and the
    console line with the metrics named in `console` and the throughput."""
    self.scalars(step, {f"train/{k}": v for k, v in metrics.items()})
    if rates:
      self.scalars(step, rates)
    self.console(step, metrics, console, rates)

  def hparams(self, values: dict):
    self.w.write_hparams(values)

  def images(self, step: int, images: dict):
    """images: name -> uint8 [H, W, C]; also saved as <workdir>/images/<name>_<step>.png."""
    self.w.write_images(step, {k: v[None] for k, v in images.items()})
    if self.is_main:
      for k, v in images.items():
        files.save_png(files.join(self.workdir, "images", f"{k.replace('/', '_')}_{step:08d}.png"), v)

  def parameter_overview(self, params, name: str) -> str:
    """Logs (process 0) a table of every parameter: name, shape, dtype, size, mean, std, sharding.

    Shapes come from the arrays' metadata; means and standard deviations from one jitted
    reduction over the (possibly sharded, multi-host) parameters whose results are replicated, so
    nothing non-addressable is fetched. Every process must call it. Returns the table.
    """
    table = overview_table(params)
    if self.is_main:
      logging.info("%s parameters:\n%s", name, table)
    return table

  def flush(self):
    self.w.flush()

  def close(self):
    self.w.flush()
    self.w.close()


@dataclasses.dataclass
class _Row:
  name: str
  shape: tuple
  dtype: str
  size: int
  mean: float
  std: float
  sharding: str


def _replicated_like(x):
  s = getattr(x, "sharding", None)
  if isinstance(s, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
  return None


def overview_table(params) -> str:
  """The parameter overview of `params` (a nested dict of arrays) as a text table."""
  flat = parameter_overview.flatten_dict(dict(params))
  names = sorted(flat)
  leaves = [flat[k] for k in names]
  stats_fn = lambda xs: [(jnp.mean(x.astype(jnp.float32)), jnp.std(x.astype(jnp.float32)))
                         for x in xs]
  repl = _replicated_like(leaves[0]) if leaves else None
  stats = jax.jit(stats_fn, out_shardings=repl)(leaves) if repl is not None else (
      jax.jit(stats_fn)(leaves))
  stats = jax.device_get(stats)  # replicated: every process holds the whole (tiny) result
  rows = []
  for k, x, (mean, std) in zip(names, leaves, stats):
    sh = getattr(x, "sharding", None)
    spec = str(tuple(sh.spec)) if isinstance(sh, jax.sharding.NamedSharding) else ""
    rows.append(_Row(name=k, shape=tuple(x.shape), dtype=str(x.dtype), size=int(np.prod(x.shape)),
                     mean=float(mean), std=float(std), sharding=spec))
  total = sum(r.size for r in rows)
  nbytes = sum(r.size * np.dtype(x.dtype).itemsize for r, x in zip(rows, leaves))
  columns = [f.name for f in dataclasses.fields(_Row)]
  return (parameter_overview.make_table(rows, column_names=columns)
          + f"\nTotal: {total:,} -- {nbytes:,} bytes")


class _Null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def _heat(v: np.ndarray) -> np.ndarray:
  """[...] in [0, 1] -> uint8 RGB (a small blue-green-yellow-red ramp)."""
  stops = np.array([[0, 0, 128], [0, 160, 255], [60, 220, 60], [255, 230, 0], [220, 20, 20]], np.float32)
  t = np.clip(v, 0, 1) * (len(stops) - 1)
  i = np.minimum(t.astype(int), len(stops) - 2)
  f = (t - i)[..., None]
  return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def recon_grid(x, rec, scores=None, mask=None) -> np.ndarray:
  """Rows per example: input | reconstruction | score heat map | kept-region overlay.

  x, rec: [B, H, W, 3] in [-1, 1]; scores, mask: [B, N] on a g x g grid (raster order).
  """
  to8 = lambda a: np.clip(np.rint((np.asarray(a, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)
  x, rec = to8(x), to8(rec)
  b, h, w, _ = x.shape
  cols = [x, rec]
  if scores is not None and mask is not None:
    g = int(round(scores.shape[1] ** 0.5))
    up = lambda a: np.repeat(np.repeat(np.asarray(a, np.float32).reshape(b, g, g), h // g, 1), w // g, 2)
    s = up(scores)
    s = (s - s.min(axis=(1, 2), keepdims=True)) / np.maximum(np.ptp(s, axis=(1, 2), keepdims=True), 1e-6)
    m = up(mask)[..., None]
    cols += [_heat(s), (x * (0.25 + 0.75 * m)).astype(np.uint8)]
  rows = np.concatenate(cols, axis=2)  # [B, H, W * ncols, 3]
  return np.concatenate(list(rows), axis=0)
