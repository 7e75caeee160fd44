"""Stage-2 defaults every Stackformer config starts from (the authors' recipe, reference.md §2).

What a stage-2 config may NOT say: anything about the tokenizer's architecture. The authors keep a
duplicated first-stage block inside each stage-2 yml (30 % kept in stage 1, 25 % in the stage-2
copy), so loading one into the other silently changes k. Here the stage-2 config only NAMES the
tokenizer (`config.tokenizer`: a stage-1 workdir or a tokenizer directory); its model kwargs are
read from that checkpoint's metadata, and the Stackformer's vocabulary, position and block sizes are
derived from them (left at 0 here). Setting them, or `config.expect.*`, turns them into checks that
fail with a clear error on a mismatch.
"""
import ml_collections as mlc

from configs import common


def stage2_base(*, tokenizer="", batch=240, d_model=1024, n_heads=16, layers=(12, 12),
                dropout=0.1, n_classes=0, text=False, scan_layers=False):
  """The authors' stackformer_uncond.py / stackformer_class.py optimisation and model settings."""
  c = mlc.ConfigDict()
  c.trainer = "stackformer"
  c.seed = 0
  c.tokenizer = tokenizer              # stage-1 workdir / tokenizer dir (--config.tokenizer=...)
  c.tokenizer_step = -1                # -1: the tokenizer's latest checkpoint
  # Optional expectations on the tokenizer (-1: unchecked). E.g. expect.keep_ratio=0.25 refuses a
  # 30 % tokenizer instead of silently training on K = 307 tokens.
  c.expect = mlc.ConfigDict(dict(keep_ratio=-1.0, grid=-1, codebook_size=-1, num_tokens=-1))
  c.total_steps = -1
  c.total_epochs = 50.0
  c.resume = ""                        # a stage-2 workdir to start from when workdir is empty

  c.input = mlc.ConfigDict(dict(
      name="imagenet2012", source="tfds", split="train", data_dir="", folder="",
      num_train_examples=1_281_167, batch_size=batch,
      res=-1,                          # -1: the tokenizer's resolution (anything else must match)
      augment="crop_flip",             # authors: random crop + flip, tokens computed on the fly
      num_threads=16, prefetch=2, seed_offset=0,
      device_prefetch=2,               # global batches put on the devices ahead of the step
      tokens_dir="",                   # exported tokens (maskvq_jax.tools.export_tokens) instead
      label_key="label",               # class models
      caption_key="",                  # text models: a string feature, or "captions/text"
      text_len=64))                    # bytes per caption (text models)
  c.eval = mlc.ConfigDict(dict(split="validation", batch_size=batch, num_examples=2048,
                               every_steps=5000))
  c.model = mlc.ConfigDict(dict(
      vocab_size=0, position_size=0, block_size=0,   # 0: derived from the tokenizer
      d_model=d_model, n_heads=n_heads, code_layers=layers[0], position_layers=layers[1],
      embd_dropout=dropout, resid_dropout=dropout, attn_dropout=dropout,
      n_classes=n_classes, null_class=False, text_dim=0, cond_dropout=0.0,
      # Execution options: the same function and weights, changeable on resume
      # (maskvq_jax/models/transformer.py). scan_layers: each transformer is one nn.scan over its
      # blocks (compiles once per stack, not once per block; params stacked on a "layers" axis;
      # a checkpoint of the other layout is converted on restore, samplers decode per layer).
      # remat_policy: none | full | dots_saveable | dots_with_no_batch_dims_saveable (what a block
      # keeps for the backward pass). attention_impl: xla (einsum, exact official numerics) |
      # dot_product (jax.nn.dot_product_attention, XLA) | cudnn (cuDNN fused attention on GPUs;
      # XLA with a logged note where cuDNN is unavailable) | pallas (Pallas splash attention on
      # TPUs, causal forward; XLA with a logged note elsewhere) | auto (cudnn on GPU, pallas on
      # TPU, xla on CPU). The fused ones skip attention-weight dropout, so with attn_dropout > 0
      # training uses xla.
      scan_layers=scan_layers, remat_policy="none", attention_impl="xla"))
  # Byte-level text encoder (maskvq_jax/models/text_encoder.py), trained jointly; text models only.
  c.text_encoder = mlc.ConfigDict(dict(enabled=text, d_model=512, n_heads=8, n_layers=4,
                                       dropout=dropout))
  c.loss = mlc.ConfigDict(dict(position_weight=1.0))
  c.optim = mlc.ConfigDict(dict(
      lr=5e-4, base_lr=0.0, b1=0.9, b2=0.95, weight_decay=0.01,  # decay on dense kernels only
      schedule="warmup_cosine", warmup_steps=0, warmup_epochs=0.0, min_lr_ratio=0.0,
      grad_clip=0.0,                   # 0: no clipping (authors)
      grad_accum_steps=1))             # > 1: mean gradient of that many micro-batches, one update
  c.param_ema = 0.0
  # "auto": bfloat16 activations on TPU/GPU, float32 on CPU (core/loop.py resolve_compute_dtype);
  # "float32" / "bfloat16" force one. Parameters and optimizer state are float32 either way.
  c.compute_dtype = "auto"
  # Periodic sample grids (TensorBoard + <workdir>/images/*.png). Authors' log_images defaults.
  c.sample = mlc.ConfigDict(dict(
      every_steps=5000, num=16, seed=0, temperature=1.0, top_k=100, top_p=0.95,
      position_temperature=-1.0,       # < 0: the code temperature (authors: one for both)
      position_top_k=10, position_top_p=0.95,
      guidance_scale=-1.0,             # < 0: none (needs null_class or text for guidance)
      prompts=""))                     # text models: "|"-separated prompts for the grids

  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.sharding_rules = "dp"              # large models: fsdp, or fsdp_tp with a "model" axis

  common.loop_defaults(c)
  c.run_steps = -1
  c.debug_inject_nan_step = -1
  c.profile = False
  return c


def class_conditional(c, n_classes, *, null_class=True, cond_dropout=0.1):
  """Class tokens replace sos (authors); + a learned null class for classifier-free guidance."""
  c.model.update(n_classes=n_classes, null_class=null_class,
                 cond_dropout=cond_dropout if null_class else 0.0)
  return c
