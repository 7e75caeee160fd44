r"""Entry point: `python -m maskvq_jax.main --config configs/<x>.py[:args] --workdir <dir>`.

Overrides: `--config.input.batch_size=64 --config.mesh='(("data",-1),("fsdp",4),("model",1))'`.
Multi-host (TPU pods, multi-node GPU): add `--multihost` so `jax.distributed.initialize()` runs
first (it raises on a plain single host, hence the flag) and auto-detects Cloud TPU / SLURM / MPI.
Where nothing can be detected (several processes on one machine, launch/local_multiprocess.sh, or a
hand-rolled cluster), give `--coordinator_address=host:port --num_processes=N --process_id=i`
(this implies `--multihost`; CPU processes talk through gloo collectives). Compiled steps are kept
in a persistent cache (`--config.compile_cache_dir`, core/compile_cache.py). The trainer is chosen by
`config.trainer` through `maskvq_jax.trainers`. A checkpoint that cannot be written (disk full,
read-only workdir) stops the run with a message naming the directory; earlier steps stay intact.
A mistake in the flags or the config (missing file, bad `:arg`, misspelt `--config.x`) is one
`error:` line (exit 2), reported before jax, TensorFlow or any device is loaded (core/cli.py).
A workdir in use by another trainer (core/workdir_lock.py; `--config.takeover_lock=True` takes
over a stale lock) and checkpoints of another configuration (core/resume_guard.py) are one-line
`error: ...` messages with exit status 2; nothing in the workdir is moved.
"""
import sys
from typing import Optional

from absl import flags
from absl import logging
from ml_collections import config_flags

from maskvq_jax.core import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and images go here.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator; skips auto-detection.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (explicit mode).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit mode).")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed(multihost: bool, coordinator: Optional[str], num_processes: Optional[int],
                     process_id: Optional[int]):
  """Starts JAX's multi-controller runtime (`core.distributed.initialize`).

  Raises:
    cli.UserError: an incomplete or inconsistent set of explicit flags.
  """
  from maskvq_jax.core import distributed  # pylint: disable=g-import-not-at-top  # imports jax
  with cli.user_input(ValueError):
    distributed.initialize(multihost, coordinator, num_processes, process_id)


def main(argv):
  import jax  # pylint: disable=g-import-not-at-top
  from maskvq_jax.core import checkpointing  # pylint: disable=g-import-not-at-top
  from maskvq_jax.core import workdir_lock  # pylint: disable=g-import-not-at-top
  from maskvq_jax.core import compile_cache  # pylint: disable=g-import-not-at-top
  from maskvq_jax import trainers  # pylint: disable=g-import-not-at-top  # light: a registry
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.trainer not in trainers.TRAINERS:
    raise cli.UserError(f"config.trainer={config.trainer!r}: expected one of "
                        f"{', '.join(sorted(trainers.TRAINERS))}")
  from maskvq_jax.core import files  # pylint: disable=g-import-not-at-top
  try:  # every location the user gave: a known URL scheme or a local path (file:// is local)
    workdir = files.user_location(_WORKDIR.value or "", "--workdir")
    for section, key in ((config, "resume"), (config, "tokenizer"),
                         (config.get("input") or {}, "tokens_dir")):
      if section.get(key):
        name = "config.input." + key if key == "tokens_dir" else "config." + key
        section[key] = files.user_location(section[key], name)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  init_distributed(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:  # keep TensorFlow (tf.data / TFDS / TensorBoard) off the accelerators
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except Exception:  # pylint: disable=broad-except  # TF absent or already initialised
    pass
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  compile_cache.enable(config.get("compile_cache_dir", "auto"))  # before anything compiles
  trainer = trainers.get(config.trainer)
  try:
    summary = trainer.train(config, workdir)
  except (checkpointing.CheckpointRestoreError, workdir_lock.WorkdirLockError) as e:
    raise cli.UserError(str(e)) from e  # the user's workdir / config; nothing was moved
  except (FloatingPointError, checkpointing.CheckpointWriteError) as e:
    logging.error("%s", e)
    sys.exit(f"training stopped: {e}")
  logging.info("done: steps %d -> %d of %d%s", summary["first_step"], summary["last_step"],
               summary["total_steps"], " (preempted)" if summary.get("preempted") else "")


def _jax_absl_flags():
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.config_with_absl()


if __name__ == "__main__":
  cli.run_absl(main, config_flag="config", setup=_jax_absl_flags)
