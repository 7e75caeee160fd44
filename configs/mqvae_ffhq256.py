r"""MQ-VAE stage 1 on FFHQ 256 (f8, keep 30%): the ImageNet recipe on the taming FFHQ split.

FFHQ is read from a local folder of PNGs through maskvq_jax/data/builders/image_folder (build once:
`python -m maskvq_jax.data.build --name image_folder/ffhq --folder /data/ffhq
--data_dir ~/tensorflow_datasets`).
Augmentation follows the authors' FFHQ loader: RandomResizedCrop(scale 0.75-1, square) + flip.
The authors released no FFHQ config; epochs/keep ratio here are ours (UNVERIFIED vs the paper).

  python -m maskvq_jax.main --config configs/mqvae_ffhq256.py --workdir gs://bucket/mqvae_ffhq
  python -m maskvq_jax.main --config configs/mqvae_ffhq256.py:keep=0.25 --workdir ...

Pod slice, as `tools.plan` prints it:

  python -m maskvq_jax.tools.plan --config configs/mqvae_ffhq256.py --devices 32

rules dp on mesh data=-1 (POD_SLICE below). The 38M-parameter state is 0.43 GiB replicated per
device, so fsdp buys nothing; batch 256 divides every slice up to 256 chips (8 per chip on 32).
Eval batches that do not divide the batch shards are padded, never refused.
"""
from configs import common


# Config arguments for a TPU pod slice / multi-node GPU run (tools/plan.py --devices N).
POD_SLICE = "rules=dp"


def get_config(arg=None):
  arg = common.parse_arg(arg, keep=0.30, scorer="conv", dense=False, batch=256, runlocal=False,
                         rules="dp", folder="")
  c = common.stage1_base(keep=arg.keep, scorer=arg.scorer, dense=arg.dense, batch=arg.batch, res=256)
  c.input.update(name="image_folder/ffhq", source="tfds", split="train", num_train_examples=60_000,
                 augment="rrc_flip", folder=arg.folder)
  c.eval.split = "validation"
  c.total_epochs = 100.0
  c.sharding_rules = arg.rules
  if arg.runlocal:
    common.runlocal(c)
  return c
