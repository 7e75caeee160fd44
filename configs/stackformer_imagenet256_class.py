r"""Class-conditional Stackformer on ImageNet 256: 12 + 12 layers (≈ 310M), or `:large` 24 + 24
(≈ 612M), d 1024, 16 heads, dropout 0.1, the authors' AdamW(0.9, 0.95) / wd 0.01 / cosine.

  python -m maskvq_jax.main --config configs/stackformer_imagenet256_class.py \
      --config.tokenizer=/ckpt/mqvae_imagenet256 --workdir /ckpt/stackformer_in256
  # the large model, parameters and optimizer state sharded over 4-way fsdp x 2-way tensor:
  ... --config configs/stackformer_imagenet256_class.py:large,rules=fsdp_tp,fsdp=4,model=2

Class tokens 0..999 replace sos as in the authors' class model, with the authors' exact vocabulary
of 2024 (no null class, no guidance) by default. Classifier-free guidance is one argument away:
`:null=True` adds a learned null class (vocabulary 2025), dropped 10 % of the time in training, and
`python -m maskvq_jax.sample ... --guidance 2` then guides with it.
Tokens are computed on the fly from random-crop + flip augmented images.

Pod slice, as `tools.plan` prints it:

  python -m maskvq_jax.tools.plan --config configs/stackformer_imagenet256_class.py --devices 32

`:rules=fsdp,fsdp=4,batch=256` (POD_SLICE below): parameters, EMA and AdamW state sharded 4-way
(fsdp=4, one TPU VM host of 4 chips; data=-1 fills the rest), 0.87 GiB of state per chip (1.71 GiB
for `:large`) instead of 3.46 / 6.84 GiB replicated. The authors' batch 240 does not divide 32 or
64 chips, hence batch 256 (the stage-2 lr is not scaled by the batch). sample.num=16 grids and eval
batches that do not divide the batch shards are padded, never refused.
"""
from configs import common
from configs import stackformer_common


# Config arguments for a TPU pod slice / multi-node GPU run (tools/plan.py --devices N).
POD_SLICE = "rules=fsdp,fsdp=4,batch=256"


def get_config(arg=None):
  arg = common.parse_arg(arg, tokenizer="", keep=-1.0, large=False, null=False, batch=240,
                         rules="dp", fsdp=1, model=1)
  layers = (24, 24) if arg.large else (12, 12)
  c = stackformer_common.stage2_base(tokenizer=arg.tokenizer, batch=arg.batch, layers=layers,
                                     scan_layers=True)  # each stack compiles as one scan
  stackformer_common.class_conditional(c, 1000, null_class=arg.null, cond_dropout=0.1)
  c.expect.keep_ratio = arg.keep
  c.input.update(name="imagenet2012", source="tfds", split="train",
                 num_train_examples=1_281_167, augment="crop_flip", label_key="label")
  c.eval.update(split="validation", num_examples=2048)
  c.sample.update(num=16)
  c.sharding_rules = "fsdp_tp" if arg.model > 1 and arg.rules == "dp" else arg.rules
  c.mesh = (("data", -1), ("fsdp", arg.fsdp), ("model", arg.model))
  return c
