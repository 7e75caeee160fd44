r"""Unconditional Stackformer on FFHQ 256 (the paper's 307M model: d 1024, 16 heads, 12 + 12).

  python -m maskvq_jax.main --config configs/stackformer_ffhq256.py \
      --config.tokenizer=/ckpt/mqvae_ffhq256 --workdir /ckpt/stackformer_ffhq256
  # refuse a tokenizer that does not keep 25 % (the authors' stage-2 copy) of the regions:
  ... --config configs/stackformer_ffhq256.py:keep=0.25

Vocabulary / positions / block size come from the tokenizer's checkpoint (1025 / 1025 / K for a
32 x 32 grid, 1024 codes). Images: FFHQ through the image_folder builder, RandomResizedCrop + flip
(the authors' FFHQ augmentation), tokens computed on the fly.

Pod slice, as `tools.plan` prints it:

  python -m maskvq_jax.tools.plan --config configs/stackformer_ffhq256.py --devices 32

`:rules=fsdp,fsdp=4,batch=256` (POD_SLICE below): parameters, EMA and AdamW state sharded 4-way
(fsdp=4, one TPU VM host of 4 chips; data=-1 fills the rest), 0.86 GiB of state per chip instead of
3.44 GiB replicated. The authors' batch 240 does not divide 32 or 64 chips, hence batch 256 (the
stage-2 lr is not scaled by the batch). sample.num=16 grids and eval batches that do not divide the
batch shards are padded, never refused.
"""
from configs import common
from configs import stackformer_common


# Config arguments for a TPU pod slice / multi-node GPU run (tools/plan.py --devices N).
POD_SLICE = "rules=fsdp,fsdp=4,batch=256"


def get_config(arg=None):
  arg = common.parse_arg(arg, tokenizer="", keep=-1.0, batch=240, rules="dp", fsdp=1)
  # scan_layers: the 24 blocks compile as two scans (same weights and function, golden-tested)
  c = stackformer_common.stage2_base(tokenizer=arg.tokenizer, batch=arg.batch, scan_layers=True)
  c.expect.keep_ratio = arg.keep
  c.input.update(name="image_folder/ffhq", source="tfds", split="train", num_train_examples=60_000,
                 augment="rrc_flip")
  c.eval.update(split="validation", num_examples=2048)
  c.sample.update(num=16)
  c.sharding_rules = arg.rules
  c.mesh = (("data", -1), ("fsdp", arg.fsdp), ("model", 1))
  return c
