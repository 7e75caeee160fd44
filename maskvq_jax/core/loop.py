"""The training loop's shared pieces, used by both trainers.

Step counts and learning-rate schedules from a config, tree norms, the step cadence (`itstime`),
preemption agreed over processes, the NaN/Inf guard on fetched metrics, and the restore-or-init
start of a run.
"""
import contextlib
import json
import math
import signal
import threading
import time
from typing import Optional

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from maskvq_jax.core import checkpointing
from maskvq_jax.core import sharding as sharding_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Platforms where "auto" means bfloat16 activations (matrix units run bf16 at full rate). On CPU
# bf16 is emulated and slower than float32, so "auto" stays float32 there.
BF16_PLATFORMS = ("tpu", "gpu", "cuda", "rocm")


def resolve_compute_dtype(name: str, platform: Optional[str] = None) -> str:
  """`config.compute_dtype` -> "float32" | "bfloat16"; "auto" decides by the default backend.

  Parameters and optimizer state stay float32 whatever this says; it sets the activation dtype.

  Raises:
    ValueError: `name` is not "auto", "float32" or "bfloat16".
  """
  if name == "auto":
    platform = (platform or jax.default_backend()).lower()
    return "bfloat16" if platform in BF16_PLATFORMS else "float32"
  if name not in DTYPES:
    raise ValueError(f"compute_dtype={name!r}; choose auto or one of {sorted(DTYPES)}")
  return name


def compute_dtype(config):
  """The jnp activation dtype of `config.compute_dtype` on this backend."""
  return DTYPES[resolve_compute_dtype(config.compute_dtype)]


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN/Inf; raised before anything of that state is checkpointed."""


def total_steps(config) -> int:
  """`config.total_steps` if > 0, else ceil(total_epochs * num_train_examples / batch)."""
  if config.get("total_steps", -1) and config.total_steps > 0:
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * config.input.num_train_examples / config.input.batch_size))


def warmup_steps(config) -> int:
  o = config.optim
  if o.get("warmup_steps", -1) is not None and o.warmup_steps >= 0:
    return int(o.warmup_steps)
  return int(o.warmup_epochs * config.input.num_train_examples / config.input.batch_size)


def learning_rate(config) -> float:
  """`optim.lr` if > 0, else the authors' rule base_lr x global batch size."""
  o = config.optim
  return float(o.lr) if o.lr > 0 else float(o.base_lr * config.input.batch_size)


def schedule(config, peak: float, steps: int, warmup: int) -> optax.Schedule:
  """Linear warm-up from 0 then cosine to min_lr_ratio * peak (models/stage1/utils.py)."""
  kind = config.optim.schedule
  if kind == "constant":
    return optax.constant_schedule(peak)
  if kind != "warmup_cosine":
    raise ValueError(f"unknown optim.schedule {kind!r}; choose warmup_cosine or constant")
  warmup = min(warmup, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=max(warmup, 0), decay_steps=max(steps, warmup + 1),
      end_value=peak * config.optim.min_lr_ratio)


def grad_accum_steps(config) -> int:
  """`config.optim.grad_accum_steps` (1: none); micro-batches per step."""
  return int(config.optim.get("grad_accum_steps", 1))


def check_train_batch(batch_size: int, axes, data_parallel: int, mesh) -> None:
  """ValueError unless the training batch is a positive multiple of the data-parallel size.

  Unlike sample and eval counts (padded, `core/sharding.py`), the training batch is never padded:
  padding would change the optimisation. The error names the nearest sizes to choose.
  """
  bs = int(batch_size)
  if bs >= 1 and bs % data_parallel == 0:
    return
  lo = max(data_parallel, bs // data_parallel * data_parallel)
  hi = -(-max(bs, 1) // data_parallel) * data_parallel
  pick = f"{lo}" if lo == hi else f"{lo} or {hi}"
  raise ValueError(f"input.batch_size={bs} is not divisible by the data-parallel mesh axes "
                   f"{list(axes)} (size {data_parallel}) of mesh {mesh}: choose a multiple of "
                   f"{data_parallel}, e.g. --config.input.batch_size={pick} (training batches are "
                   "not padded, that would change the optimisation)")


def check_grad_accum(config, data_parallel: int):
  """ValueError unless the global batch splits into equal micro-batches over the data axes."""
  n, bs = grad_accum_steps(config), config.input.batch_size
  if n < 1:
    raise ValueError(f"optim.grad_accum_steps={n} must be >= 1")
  if bs % n or (bs // n) % data_parallel:
    raise ValueError(f"optim.grad_accum_steps={n}: input.batch_size={bs} must split into {n} "
                     f"micro-batches, each a multiple of the data-parallel size {data_parallel}")


DEVICE_PREFETCH = 2  # default of input.device_prefetch


def device_prefetch(inp) -> int:
  """`input.device_prefetch` (global batches put on the devices ahead of the step; 0: none) of
  the input config `inp`, default DEVICE_PREFETCH; ValueError unless it is an int >= 0."""
  n = inp.get("device_prefetch", DEVICE_PREFETCH)
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f"input.device_prefetch={n!r} must be an int >= 0 (0: no prefetch)")
  return n


def check_run_config(config, num_devices: int, *, evaluates: bool) -> int:
  """The checks both trainers share, before anything is traced (ValueError naming the value).

  Mesh and sharding rules, the training batch against the data-parallel size, eval.batch_size
  (and, when the run `evaluates`, at least one eval batch in eval.num_examples), compute_dtype,
  gradient accumulation, device prefetch, param_ema and the step count. Returns the
  data-parallel size (the product of the mesh axes the batch is split over).
  """
  names, sizes = sharding_lib.mesh_shape(config.mesh, num_devices)
  mesh = dict(zip(names, sizes))
  rules = sharding_lib.get_rules(config.sharding_rules)
  for rule in dict(rules).values():
    for a in ((rule,) if isinstance(rule, str) else tuple(rule or ())):
      if a not in mesh:
        raise ValueError(f"sharding_rules={config.sharding_rules!r} uses mesh axis {a!r} missing "
                         f"from mesh {mesh}")
  axes = dict(rules)["batch"]
  axes = [a for a in ((axes,) if isinstance(axes, str) else axes) if a in mesh]
  div = int(np.prod([mesh[a] for a in axes]))
  check_train_batch(config.input.batch_size, axes, div, mesh)
  if config.eval.batch_size < 1:  # any other size is padded up to the batch shards
    raise ValueError(f"eval.batch_size={config.eval.batch_size} must be >= 1")
  if evaluates and config.eval.num_examples < config.eval.batch_size:
    raise ValueError(f"eval.num_examples={config.eval.num_examples} is fewer than one batch of "
                     f"eval.batch_size={config.eval.batch_size}: the evaluation would have no batch")
  resolve_compute_dtype(config.compute_dtype)
  check_grad_accum(config, div)
  device_prefetch(config.input)
  if not 0.0 <= config.param_ema < 1.0:
    raise ValueError(f"param_ema={config.param_ema} must be in [0, 1)")
  if total_steps(config) < 1:
    raise ValueError("total_steps (or total_epochs) gives no training step")
  return div


def microbatches(tree, n: int):
  """[B, ...] leaves -> [n, B/n, ...]; micro-batch i holds examples i, i + n, i + 2n, ...

  Strided rather than contiguous so that, with the batch axis sharded in contiguous blocks over
  the devices, every micro-batch is spread over all devices without moving data.
  """
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1),
                      tree)


def accumulate(fn, carry, micro, n: int):
  """Runs `fn(carry, micro_i, i) -> (carry, (grads, metrics))` over n micro-batches (one scan).

  Returns (final carry, mean grads, mean metrics): float32 sums divided by n once, so equal-sized
  micro-batches give the whole batch's mean.
  """
  first = jax.tree.map(lambda x: x[0], micro)
  _, out_shape = jax.eval_shape(fn, carry, first, jnp.zeros((), jnp.int32))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), out_shape)

  def body(state, xs):
    c, sums = state
    c, out = fn(c, *xs)
    return (c, jax.tree.map(lambda a, b: a + b.astype(jnp.float32), sums, out)), None

  (carry, (g_sum, m_sum)), _ = jax.lax.scan(body, (carry, zeros),
                                            (micro, jnp.arange(n, dtype=jnp.int32)))
  mean = lambda t: jax.tree.map(lambda v: v / n, t)
  return carry, mean(g_sum), mean(m_sum)


def tree_l2(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def num_params(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
  """True on multiples of `every` (and on the last step when `last`)."""
  return bool(every and every > 0 and step % every == 0) or (last and step == total)


class Preemption:
  """SIGTERM -> every process finishes the same step, saves it and returns.

  `stop(step)` is called after every step; it never waits for the device:
  - one process: a SIGTERM handler sets `flag`, which `stop` reads;
  - several processes, JAX's preemption service on (the default): jax.distributed's own SIGTERM
    notifier tells the coordination service, which agrees in the background on one step (the
    furthest step any process has reached, plus one); `stop` only compares `step` with it
    (`multihost_utils.reached_preemption_sync_point`, the call Orbax's `should_save` makes too);
  - several processes, the service off (`--jax_enable_preemption_service=false`): a SIGTERM
    handler sets the local flag and the processes OR their flags with one all-gather on the steps
    that are multiples of `check_every` (the same steps everywhere), so a signalled process runs
    at most `check_every - 1` more steps.
  The signal handler is installed on entering and removed on exit; before that, SIGTERM ends the
  process (nothing since the last checkpoint is lost; under `exit_on_sigterm` with status 143,
  its workdir lock removed). With the preemption service, a notice that
  arrives before the loop (while restoring or compiling) is kept: the run stops after its first
  step, provided the start step was announced (`announce_step`) before the notice came; the
  trainers announce the latest checkpoint's step before restoring. A notice in the seconds
  between `jax.distributed.initialize` and that call, on a resumed run, agrees on a step before
  the restored one and is missed (the run continues until it is killed).
  """

  def __init__(self, first_step: int = 0, check_every: int = 10):
    if check_every < 1:
      raise ValueError(f"preemption_check_every_steps={check_every} must be >= 1")
    self.flag, self._old, self._installed = False, None, False
    self.first_step, self.check_every = int(first_step), int(check_every)
    self.mode = "local"
    if jax.process_count() > 1:
      self.mode = "sync_point" if _preemption_service() else "allgather"

  def __enter__(self):
    if self.mode == "sync_point":
      announce_step(self.first_step)  # a notice from now on agrees on first_step + 1 or later
      return self  # jax.distributed's notifier owns SIGTERM; a Python handler would replace it
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    except ValueError:  # not in the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint after the current step", signum)
    self.flag = True

  def stop(self, step: int) -> bool:
    """Whether every process stops (and saves) after `step`; all processes get the same answer."""
    if self.mode == "local":
      return self.flag
    if self.mode == "sync_point":
      reached = multihost_utils.reached_preemption_sync_point(step)
      if reached:
        logging.warning("preemption notice: every process saves step %d and stops", step)
      return reached
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.flag, np.int32))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)
    return False


@contextlib.contextmanager
def exit_on_sigterm():
  """Inside: a SIGTERM outside the training loop (restoring, compiling, the final evaluation) ends
  the process with status 143 (128 + SIGTERM) by raising SystemExit, so `finally` blocks run and
  the workdir lock is removed: rerunning the same command resumes without `takeover_lock`. The
  default action killed the process on the spot and left a stale lock that refused the rerun.
  Inside the loop `Preemption` owns SIGTERM (save, then stop). Nothing is installed where JAX's
  preemption service owns SIGTERM (several processes: a notice before the loop is kept), nor
  outside the main thread. Python runs the handler between bytecodes: a signal that lands during
  a compilation takes effect when the compilation returns. Both trainers' `train` enter it, so
  every caller (main, the quickstart, the small reproduction) gets it."""
  if ((jax.process_count() > 1 and _preemption_service())
      or threading.current_thread() is not threading.main_thread()):
    yield
    return

  def handle(signum, frame):
    del frame
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    logging.warning("received signal %d outside the training loop: exiting without a new "
                    "checkpoint (rerun the same command to resume from the last one)", signum)
    raise SystemExit(128 + signum)

  old = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, old)


def announce_step(step: int):
  """Tells JAX's preemption sync manager (if it runs) that this process is at `step`.

  The agreed step is the largest announced step + 1; a process that has announced nothing counts
  as step 0, which a resumed run never reaches again.
  """
  if jax.process_count() > 1 and _preemption_service():
    multihost_utils.reached_preemption_sync_point(int(step))


def _preemption_service() -> bool:
  """Whether jax.distributed runs a preemption sync manager (it does unless the config is off)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  # no public accessor
  return (distributed.global_state.client is not None
          and distributed.global_state.preemption_sync_manager is not None)


def check_finite(pending: list) -> list:
  """Fetches pending per-step metrics; raises NonFiniteLossError naming the first bad step."""
  fetched = jax.device_get(pending)
  for step, m in fetched:
    bad = sorted(k for k, v in m.items() if not np.isfinite(v))
    if bad:
      raise NonFiniteLossError(
          f"non-finite values at step {step}: " + ", ".join(f"{k}={m[k]}" for k in bad) +
          "; stopping without checkpointing this state")
  return fetched


def restore_or_create(ckpt, abstract, resume, data, create, rng, mesh, rules, state_sh,
                      check=None, adapt=None):
  """Both trainers' start: restore (workdir -> `resume`) with the data position, else init.

  `check` (core/resume_guard.checker) compares each checkpoint's stored config with this run's
  before anything is restored; a difference is an IncompatibleCheckpointError, nothing moved.
  `adapt` (checkpointing.LayoutAdapter) restores a checkpoint stored in another layer layout.
  """
  latest = ckpt.latest_step()
  if latest is not None:  # a preemption notice during the restore then stops after step latest + 1
    announce_step(latest)
  restored = checkpointing.restore_for_training(ckpt, abstract, resume, check, adapt)
  if restored is not None:
    step0, state, _, data_state = restored
    if data_state:
      from maskvq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
      pipeline.restore_position(data, data_state)
    logging.info("restored step %d", step0)
    return state
  return init_state(create, rng, mesh, rules, state_sh)


# XLA compiler options for the one-off initialiser, per backend. On the CPU its backend
# optimisations (LLVM, over one RNG expansion per parameter) cost far more than they save: the
# quickstart tokenizer's initialiser compiled in 21.9 s at the default level and 6.8 s at level 0,
# then ran in 0.12 s instead of 0.03 s (2-core EPYC, 2026-12-02). The values agree to float
# rounding (37 of 489 leaves differ, by at most 1 ulp); every process compiles it the same way.
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def init_state(create, rng, mesh, rules, state_sh):
  """A fresh (unboxed) train state `create(rng)`, made on the devices with its shardings."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=state_sh)
    # the mesh's platform: the same on every process, so every process compiles one program
    options = INIT_COMPILER_OPTIONS.get(mesh.devices.flat[0].platform)
    if not options:
      return init(rng)
    return init.lower(rng).compile(compiler_options=options)(rng)


def run_meta(config, step, mesh) -> dict:
  """What every checkpoint's meta records about the run (config, versions, topology, data).

  `compute_dtype` is the resolved activation dtype (the config may say "auto").
  """
  from maskvq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return {"step": int(step), "time": time.time(), "config": json.loads(config.to_json_best_effort()),
          "jax_version": jax.__version__, "num_devices": jax.device_count(),
          "compute_dtype": resolve_compute_dtype(config.get("compute_dtype", "float32")),
          "num_processes": jax.process_count(), "mesh": {k: int(v) for k, v in mesh.shape.items()},
          "skipped_images": pipeline.SKIPPED.value}
