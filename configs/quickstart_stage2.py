r"""CPU quickstart, stage 2: a small class-conditional Stackformer on a quickstart tokenizer.

One model gives both kinds of samples: it is class-conditional (48 shape x colour classes) with a
learned null class dropped 10 % of the time, so sampling with the null class is unconditional
(and guidance works). Procedural shapes, no download.

  python -m maskvq_jax.main --config configs/quickstart_stage2.py \
      --config.tokenizer=runs/quickstart/stage1 --workdir runs/quickstart/stage2
  # unconditional only (sos token, the authors' layout):  configs/quickstart_stage2.py:cond=none

`:tiny` is the test suite's size (1 + 1 layers, d 32, 4 steps).
"""
from configs import common
from configs import stackformer_common
from maskvq_jax.data.builders.shapes import generate as shapes_gen


def get_config(arg=None):
  arg = common.parse_arg(arg, tokenizer="runs/quickstart/stage1", steps=600, batch=32, d=128,
                         heads=4, layers=3, cond="class", rules="dp", tiny=False)
  c = stackformer_common.stage2_base(tokenizer=arg.tokenizer, batch=arg.batch, d_model=arg.d,
                                     n_heads=arg.heads, layers=(arg.layers, arg.layers),
                                     dropout=0.0)
  if arg.cond == "class":
    stackformer_common.class_conditional(c, shapes_gen.NUM_CLASSES, cond_dropout=0.1)
  elif arg.cond == "text":
    c.text_encoder.update(enabled=True, d_model=arg.d, n_heads=arg.heads, n_layers=1, dropout=0.0)
    c.model.cond_dropout = 0.1
    c.input.text_len = 24
    c.sample.prompts = "a large red circle|a large blue square|a medium green triangle"
  elif arg.cond != "none":
    raise common.UserError(f"cond: expected one of class, text, none, got {arg.cond!r}")
  c.total_steps = arg.steps
  c.input.update(name="shapes", source="procedural", split="train", num_train_examples=8192,
                 augment="flip", num_threads=2, prefetch=2)
  c.eval.update(split="validation", batch_size=arg.batch, num_examples=2 * arg.batch,
                every_steps=200)
  # lr 2e-3: eval code loss 1.58 vs 1.69 with 1e-3 after 700 steps (quickstart tokenizer, 2026-11-28)
  c.optim.update(lr=2e-3, warmup_steps=20, min_lr_ratio=0.05)
  # the authors' log_images filters scaled to a 64-code book: top-k ~ 1/8 of the codes
  c.sample.update(every_steps=200, num=16, top_k=8, top_p=0.95, position_top_k=10,
                  position_top_p=0.95)
  c.sharding_rules = arg.rules
  c.log_every_steps = 25
  c.ckpt_every_steps = 200
  c.keep_every_steps = 0
  c.param_overview = False
  if arg.tiny:
    c.model.update(d_model=32, n_heads=2, code_layers=1, position_layers=1)
    c.text_encoder.update(d_model=32, n_heads=2)
    c.total_steps = 4 if arg.steps == 600 else arg.steps
    c.input.update(batch_size=8, num_train_examples=256, num_threads=1)
    c.eval.update(batch_size=8, num_examples=8, every_steps=0)
    c.sample.update(every_steps=0, num=8, top_k=4)
    c.log_every_steps, c.ckpt_every_steps = 1, 2
  return c
