r"""CPU quickstart: a tiny MQ-VAE on procedural shapes (32 px), minutes on a laptop.

The data are generated on the fly (maskvq_jax/data/builders/shapes, no download, no build step).
LPIPS (VGG16) dominates the step time at this size: ~0.2-0.5 steps/s on 2 CPU cores with it,
several times faster with `:perceptual=0`. After ~40 steps the kept regions already cover ~99% of
the object pixels while keeping 50% of the image (eval/object_recall vs eval/kept_fraction).

  python -m maskvq_jax.main --config configs/quickstart.py --workdir /tmp/mq_quick
  python -m maskvq_jax.main --config configs/quickstart.py:keep=0.5,scorer=mlp --workdir /tmp/mq_q2
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m maskvq_jax.main \
      --config configs/quickstart.py:rules=fsdp --config.mesh='(("data",4),("fsdp",2),("model",1))' ...
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, keep=0.5, scorer="conv", dense=False, steps=200, rules="dp",
                         perceptual=1.0, tiny=False)
  c = common.stage1_base(keep=arg.keep, scorer=arg.scorer, dense=arg.dense, batch=16, res=32)
  common.runlocal(c)
  c.total_steps = arg.steps
  c.sharding_rules = arg.rules
  c.loss.perceptual_weight = arg.perceptual
  if arg.tiny:  # the smallest useful run: the test suite's trainer config (16 px, batch 8)
    c.input.update(res=16, batch_size=8, num_train_examples=256, num_threads=1)
    c.eval.update(batch_size=8, num_examples=16, every_steps=0, image_every_steps=0, num_images=4,
                  lpips=arg.perceptual > 0)
    c.model.update(resolution=16, codebook_size=16, codebook_dim=16, demasker_layers=1)
    c.disc.update(ndf=16, n_layers=2)
    c.log_every_steps, c.ckpt_every_steps = 1, 2
    c.param_overview = False
  return c
