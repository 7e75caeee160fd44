r"""The small-scale reproduction's shared budget (`launch/repro_small.sh`): 32 px emoji, CPU.

Every stage-1 variant (dense VQGAN, MQ-VAE adaptive / random / MLP masks at several keep ratios)
gets the SAME steps, batch, codebook, widths, optimiser and seed; both stage-2 models (the
Stackformer on an MQ-VAE's kept tokens, the dense raster GPT on a dense VQGAN's tokens) get the
same width, depth, steps, batch and seed. Only the named argument differs between runs.

  # stage 1 (emoji/32 is built from the installed font on first use, or: data.build --name emoji/32)
  python -m maskvq_jax.main --config configs/repro_small.py:keep=0.25 --workdir R/stage1/adaptive_k0.25
  python -m maskvq_jax.main --config configs/repro_small.py:dense --workdir R/stage1/dense
  python -m maskvq_jax.main --config configs/repro_small.py:keep=0.25,scorer=random --workdir ...
  # stage 2 (the tokenizer is the stage-1 workdir)
  python -m maskvq_jax.main --config configs/repro_small.py:stage=2 \
      --config.tokenizer=R/stage1/adaptive_k0.25 --workdir R/stage2/stackformer_k0.25
  python -m maskvq_jax.main --config configs/repro_small.py:stage=2,gpt=dense \
      --config.tokenizer=R/stage1/dense --workdir R/stage2/dense_gpt

Budget choices (CPU, about two hours on 2 idle cores for the whole pipeline; measured step times
and the estimate are in docs/repro_small/): the quickstart's tokenizer widths (ch 32, one
downsampling: a 16 x 16 grid of 2 x 2-pixel regions, so keep 0.25 = 64 tokens; `down=4` gives
an 8 x 8 grid, i.e. a dense VQGAN with the same 64 tokens), a 256-code book, L1 + commitment
losses only (LPIPS and the GAN cost several times the step time at this size, identically for
every variant, so they are left out for all of them), lr 5e-4 (the quickstart's finding).
Stage 2: d 128, 4 heads, 3 + 3 layers (the dense GPT: 6 layers), dropout 0.1, lr 2e-3.

`tiny` (REPRO_TINY=1): 16 px emoji (8 x 8 grid), a few steps, minute-scale; what the test runs.
"""
import ml_collections as mlc

from configs import common
from configs import stackformer_common

DATASET = "emoji"
RES = 32
TRAIN_EXAMPLES = 3539   # emoji train split (NotoColorEmoji 2.042); only sets epochs in the logs
STAGE1_STEPS = 1000
STAGE2_STEPS = 1500
STAGE1_BATCH = 16
STAGE2_BATCH = 16
CODEBOOK = 256
SEED = 0


def _data(c, res, data_dir):
  c.input.update(name=f"{DATASET}/{res}", source="tfds", split="train", data_dir=data_dir,
                 num_train_examples=TRAIN_EXAMPLES, res=res, augment="flip", num_threads=2,
                 prefetch=2, seed_offset=0)


def stage1(arg) -> mlc.ConfigDict:
  res = 16 if arg.tiny else RES
  c = common.stage1_base(keep=arg.keep, scorer=arg.scorer, dense=arg.dense, batch=STAGE1_BATCH,
                         res=res)
  common.runlocal(c)  # the quickstart's small tokenizer; then the shared budget
  c.seed = SEED
  _data(c, res, arg.data_dir)
  ch_mult = {2: (1, 2), 4: (1, 2, 2)}.get(arg.down)
  if ch_mult is None:
    raise ValueError(f"down={arg.down}; choose 2 (16 x 16 grid at 32 px) or 4 (8 x 8)")
  c.model.update(resolution=res, ch_mult=ch_mult, codebook_size=CODEBOOK, codebook_dim=32)
  c.loss.update(perceptual_weight=0.0, disc_factor=0.0)  # L1 + commitment, every variant
  c.optim.update(lr=5e-4, warmup_steps=50)
  c.total_steps = arg.steps if arg.steps > 0 else STAGE1_STEPS
  c.eval.update(split="validation", batch_size=STAGE1_BATCH, num_examples=64, lpips=False,
                every_steps=c.total_steps, image_every_steps=c.total_steps, num_images=8)
  c.log_every_steps, c.ckpt_every_steps = 50, 250
  c.param_overview = False
  if arg.tiny:
    c.input.update(batch_size=8, num_threads=1)
    c.model.update(codebook_size=32, codebook_dim=16, demasker_layers=1)
    c.total_steps = arg.steps if arg.steps > 0 else 3
    # the pipeline evaluates every run with maskvq_jax.evaluate; no in-run eval (compile time)
    c.eval.update(batch_size=8, num_examples=8, num_images=4, every_steps=0, image_every_steps=0)
    c.optim.warmup_steps = 1
    c.log_every_steps, c.ckpt_every_steps = 1, 2
  return c


def stage2(arg) -> mlc.ConfigDict:
  batch = 8 if arg.tiny else STAGE2_BATCH
  c = stackformer_common.stage2_base(tokenizer=arg.tokenizer, batch=batch, d_model=128, n_heads=4,
                                     layers=(3, 3), dropout=0.1)
  c.seed = SEED
  if arg.gpt == "dense":
    c.trainer = "dense_gpt"  # stage2/dense.py: 3 + 3 = 6 layers, same width
  elif arg.gpt != "stackformer":
    raise ValueError(f"gpt={arg.gpt!r}; choose stackformer or dense")
  _data(c, 16 if arg.tiny else RES, arg.data_dir)
  c.input.batch_size = batch
  c.total_steps = arg.steps if arg.steps > 0 else STAGE2_STEPS
  c.eval.update(split="validation", batch_size=batch, num_examples=4 * batch,
                every_steps=c.total_steps)
  c.optim.update(lr=2e-3, warmup_steps=50, min_lr_ratio=0.05)
  # the authors' log_images filters scaled to the codebook: top-k = 1/8 of the codes
  c.sample.update(every_steps=c.total_steps, num=16, top_k=CODEBOOK // 8, top_p=0.95,
                  position_top_k=10, position_top_p=0.95)
  c.log_every_steps, c.ckpt_every_steps, c.keep_every_steps = 50, 250, 0
  c.param_overview = False
  if arg.tiny:
    c.model.update(d_model=32, n_heads=2, code_layers=1, position_layers=1)
    c.input.num_threads = 1
    c.total_steps = arg.steps if arg.steps > 0 else 3
    c.eval.update(num_examples=8, every_steps=0)
    c.sample.update(every_steps=0, num=8, top_k=4)
    c.optim.warmup_steps = 1
    c.log_every_steps, c.ckpt_every_steps = 1, 2
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, stage=1, keep=0.25, scorer="conv", dense=False, down=2,
                         tokenizer="", gpt="stackformer", steps=-1, data_dir="", tiny=False)
  if arg.stage == 1:
    return stage1(arg)
  if arg.stage == 2:
    return stage2(arg)
  raise ValueError(f"stage={arg.stage}; choose 1 or 2")
