r"""Unconditional Stackformer on FFHQ 256 (the paper's 307M model: d 1024, 16 heads, 12 + 12).

  python -m maskvq_jax.main --config configs/stackformer_ffhq256.py \
      --config.tokenizer=/ckpt/mqvae_ffhq256 --workdir /ckpt/stackformer_ffhq256
  # refuse a tokenizer that does not keep 25 % (the authors' stage-2 copy) of the regions:
  ... --config configs/stackformer_ffhq256.py:keep=0.25

Vocabulary / positions / block size come from the tokenizer's checkpoint (1025 / 1025 / K for a
32 x 32 grid, 1024 codes). Images: FFHQ through the image_folder builder, RandomResizedCrop + flip
(the authors' FFHQ augmentation), tokens computed on the fly.
"""
from configs import common
from configs import stackformer_common


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
