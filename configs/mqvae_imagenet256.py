r"""MQ-VAE stage 1 on ImageNet 256 (f8, 32x32 grid, keep 30% of the regions), the authors' recipe.

Source: configs/stage1/mqvae_imagenet_f8_r30.yml of CrossmodalGroup/MaskedVectorQuantization.
Global batch defaults to 256 (authors: 8 GPUs x 30 = 240); lr follows their rule 4.5e-6 x batch.

  python -m maskvq_jax.main --config configs/mqvae_imagenet256.py --workdir gs://bucket/mqvae_in
  python -m maskvq_jax.main --config configs/mqvae_imagenet256.py:keep=0.25 --workdir ...    # r25
  python -m maskvq_jax.main --config configs/mqvae_imagenet256.py:keep=0.5,scorer=mlp ...    # ablation
  python -m maskvq_jax.main --config configs/mqvae_imagenet256.py:runlocal --workdir /tmp/mq  # CPU

Pod slice, as `tools.plan` prints it:

  python -m maskvq_jax.tools.plan --config configs/mqvae_imagenet256.py --devices 32

rules dp on mesh data=-1 (POD_SLICE below). The 38M-parameter state is 0.43 GiB replicated per
device, so fsdp buys nothing; batch 256 divides every slice up to 256 chips (8 per chip on 32).
Eval batches that do not divide the batch shards are padded, never refused.
"""
from configs import common


# Config arguments for a TPU pod slice / multi-node GPU run (tools/plan.py --devices N).
POD_SLICE = "rules=dp"


def get_config(arg=None):
  arg = common.parse_arg(arg, keep=0.30, scorer="conv", dense=False, batch=256, runlocal=False,
                         rules="dp")
  c = common.stage1_base(keep=arg.keep, scorer=arg.scorer, dense=arg.dense, batch=arg.batch, res=256)
  c.input.update(name="imagenet2012", source="tfds", split="train", num_train_examples=1_281_167,
                 augment="crop_flip")
  c.eval.split = "validation"
  c.total_epochs = 50.0
  c.sharding_rules = arg.rules
  if arg.runlocal:
    common.runlocal(c)
  return c
