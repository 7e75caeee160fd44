r"""CPU quickstart: a tiny MQ-VAE on procedural shapes (32 px), minutes on a laptop.

The data are generated on the fly (maskvq_jax/datasets/shapes, no download, no build step).

  python -m maskvq_jax.main --config configs/quickstart.py --workdir /tmp/mq_quick
  python -m maskvq_jax.main --config configs/quickstart.py:keep=0.5,scorer=mlp --workdir /tmp/mq_q2
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m maskvq_jax.main \
      --config configs/quickstart.py:rules=fsdp --config.mesh='(("data",4),("fsdp",2),("model",1))' ...
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, keep=0.5, scorer="conv", dense=False, steps=300, rules="dp",
                         perceptual=1.0)
  c = common.stage1_base(keep=arg.keep, scorer=arg.scorer, dense=arg.dense, batch=16, res=32)
  common.runlocal(c)
  c.total_steps = arg.steps
  c.sharding_rules = arg.rules
  c.loss.perceptual_weight = arg.perceptual
  return c
