r"""Entry point: `python -m maskvq_jax.main --config configs/<x>.py[:args] --workdir <dir>`.

Overrides: `--config.input.batch_size=64 --config.mesh='(("data",-1),("fsdp",4),("model",1))'`.
Multi-host (TPU pods, multi-node GPU): add `--multihost` so `jax.distributed.initialize()` runs
first (it raises on a plain single host, hence the flag). The trainer is chosen by
`config.trainer` through `maskvq_jax.trainers`.
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and images go here.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MULTIHOST.value:
    jax.distributed.initialize()
  try:  # keep TensorFlow (tf.data / TFDS / TensorBoard) off the accelerators
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except Exception:  # pylint: disable=broad-except  # TF absent or already initialised
    pass
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  from maskvq_jax import trainers  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  trainer = trainers.get(config.trainer)
  try:
    summary = trainer.train(config, _WORKDIR.value)
  except FloatingPointError as e:
    logging.error("%s", e)
    sys.exit(f"training stopped: {e}")
  logging.info("done: steps %d -> %d of %d%s", summary["first_step"], summary["last_step"],
               summary["total_steps"], " (preempted)" if summary.get("preempted") else "")


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
