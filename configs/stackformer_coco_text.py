r"""Text-conditional Stackformer on MS-COCO captions (TFDS `coco_captions`), d 1024, 12 + 12.

The authors did not release their text-to-image model (reference.md §2.3). Here every block of
both transformers cross-attends to a jointly trained byte-level text encoder (no tokenizer file,
fully offline); a learned null text replaces 10 % of the captions for classifier-free guidance.
Each training example uses one of its captions at random.

  python -m maskvq_jax.main --config configs/stackformer_coco_text.py \
      --config.tokenizer=/ckpt/mqvae_coco256 --workdir /ckpt/stackformer_coco

Pod slice, as `tools.plan` prints it:

  python -m maskvq_jax.tools.plan --config configs/stackformer_coco_text.py --devices 32

`:rules=fsdp,fsdp=4,batch=256` (POD_SLICE below): parameters, EMA and AdamW state sharded 4-way
(fsdp=4, one TPU VM host of 4 chips; data=-1 fills the rest), 1.11 GiB of state per chip instead of
4.43 GiB replicated. The authors' batch 240 does not divide 32 or 64 chips, hence batch 256 (the
stage-2 lr is not scaled by the batch). sample.num=16 grids and eval batches that do not divide the
batch shards are padded, never refused.
"""
from configs import common
from configs import stackformer_common


# Config arguments for a TPU pod slice / multi-node GPU run (tools/plan.py --devices N).
POD_SLICE = "rules=fsdp,fsdp=4,batch=256"


def get_config(arg=None):
  arg = common.parse_arg(arg, tokenizer="", keep=-1.0, batch=240, rules="dp", fsdp=1, model=1)
  c = stackformer_common.stage2_base(tokenizer=arg.tokenizer, batch=arg.batch, text=True,
                                     scan_layers=True)  # each stack compiles as one scan
  c.model.cond_dropout = 0.1
  c.expect.keep_ratio = arg.keep
  c.input.update(name="coco_captions", source="tfds", split="train", num_train_examples=118_287,
                 augment="crop_flip", label_key="", caption_key="captions/text", text_len=96)
  c.eval.update(split="val", num_examples=2048)
  c.sample.update(num=16, guidance_scale=3.0,
                  prompts="a man riding a wave on top of a surfboard|a plate of food with "
                          "broccoli|a red double decker bus on a city street|a cat sitting on a "
                          "laptop computer")
  c.sharding_rules = "fsdp_tp" if arg.model > 1 and arg.rules == "dp" else arg.rules
  c.mesh = (("data", -1), ("fsdp", arg.fsdp), ("model", arg.model))
  return c
