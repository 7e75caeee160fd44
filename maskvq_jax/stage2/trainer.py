"""Stage-2 trainer: the Stackformer prior on a FROZEN tokenizer's (code, position) tokens.

`config.trainer = "dense_gpt"` trains the dense raster GPT baseline on a dense tokenizer's codes
with everything else identical (`stage2/dense.py`).

The tokenizer is restored from a stage-1 workdir (or tokenizer directory) named by
`config.tokenizer`, reading only what encoding needs (eval/EMA params, scorer BatchNorm statistics,
EMA codebook) through `evaluation.checkpoints.load_tokenizer`'s partial restore. Its model config
comes from that checkpoint's metadata; the stage-2 config cannot restate it. The Stackformer's
vocabulary / position / block sizes are derived from it, and any explicit value or `config.expect`
entry that disagrees is a ValueError before anything compiles (the authors' duplicated first-stage
block silently trained on a different k).

Tokens are computed inside the jitted step from the augmented uint8 batch (authors: on the fly),
or read from an exported token dataset (`config.input.tokens_dir`). Kept positions are put in
raster order (`make_sequences(sort=True)`, the authors' raster_scan_permuter). Loss: code CE +
w * position CE. AdamW(0.9, 0.95), weight decay only on dense kernels (the authors decay
nn.Linear weights only: no biases, LayerNorm, embeddings or pos_emb), cosine schedule.
Conditioning: class tokens (optionally with a learned null class dropped with
`model.cond_dropout` for classifier-free guidance) or captions through a jointly trained byte
text encoder (null text embedding on dropout).

Same loop machinery as stage 1 (mesh + logical rules from `sharding.py`, Orbax checkpoints with
data position, SIGTERM, NaN guard, CLU writers). Checkpoint layout, read by
`evaluation.checkpoints.load_stage2` and `maskvq_jax.sample`: `<workdir>/checkpoints/<step>/`
with `state.params` (Stackformer "params"), `state.ema_params` when param_ema > 0,
`state.text_params` for text models, and meta.config = the RESOLVED config (trainer
"stackformer", model = full Stackformer kwargs, tokenizer = absolute path).
"""
import dataclasses
import functools
import time
from typing import Any, Optional, TYPE_CHECKING

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskvq_jax.core import checkpointing
from maskvq_jax.core import cli
from maskvq_jax.core import files
from maskvq_jax.core import resume_guard
from maskvq_jax.core import workdir_lock
from maskvq_jax.stage2 import dense as dense_lib
from maskvq_jax.stage2 import losses as losses_stage2
from maskvq_jax.stage2 import sampling
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.core import loop
from maskvq_jax.core import train_loop
from maskvq_jax.core import throughput
from maskvq_jax.data import runs as ckpt_loader
from maskvq_jax.evaluation import recon
from maskvq_jax.models import text_encoder as text_lib
from maskvq_jax.models import transformer
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer, make_sequences, split_sequences

if TYPE_CHECKING:  # the step and its construction import neither (benchmarks/gpu_bench.py)
  import ml_collections

DTYPES = loop.DTYPES
NonFiniteLossError = loop.NonFiniteLossError


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any              # Stackformer "params"
  text_params: Any         # ByteTextEncoder "params" (text models) or None
  opt_state: Any
  ema_params: Any          # EMA of params (param_ema > 0) or None
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Parts:
  """Everything static the steps close over."""
  cfg: "ml_collections.ConfigDict"   # the resolved config
  model: Any                       # Stackformer, or DenseGPT for trainer "dense_gpt"
  text: Optional[text_lib.ByteTextEncoder]
  tokenizer: Any                   # MQVAE (frozen)
  tx: optax.GradientTransformation
  lr: optax.Schedule
  total_steps: int

  @property
  def num_tokens(self) -> int:
    return int(self.tokenizer.num_tokens)


# ===================================================================== tokenizer + config
def load_tokenizer(config):
  """(MQVAE, variables, info) named by config.tokenizer; clear errors if it is missing."""
  path = config.get("tokenizer", "")
  if not path:
    raise ValueError("config.tokenizer is empty: name the stage-1 workdir or tokenizer directory "
                     "(--config.tokenizer=/path/to/stage1_workdir)")
  path = files.absolute(path)
  step = config.get("tokenizer_step", -1)
  try:
    model, variables, info = ckpt_loader.load_tokenizer(path, None if step < 0 else step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.tokenizer={path!r}: {e}") from e
  if model.dense and not dense_lib.is_dense(config):
    raise ValueError(f"config.tokenizer={path!r} is a dense VQGAN (dense=True); the Stackformer "
                     "needs a masked MQ-VAE tokenizer (train the dense GPT baseline instead: "
                     f"config.trainer={dense_lib.TRAINER!r})")
  if dense_lib.is_dense(config) and not model.dense:
    raise ValueError(f"config.trainer={dense_lib.TRAINER!r} needs a dense tokenizer (dense=True), "
                     f"but config.tokenizer={path!r} is an MQ-VAE keeping {model.num_tokens} of "
                     f"{model.grid ** 2} tokens")
  return model, variables, dict(info, path=path)


def resolve_config(config, tokenizer) -> "ml_collections.ConfigDict":
  """A copy of `config` with the tokenizer-derived fields filled in; ValueError on any mismatch.

  Derived: model.vocab_size (codebook + sos, or classes + codebook [+ null]), model.position_size
  (grid^2 + sos), model.block_size (grid^2 as the authors; it must hold the K kept tokens),
  model.text_dim, input.res.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(config.to_dict())
  m, tok = c.model, tokenizer
  cb, n_pos, k = int(tok.codebook_size), int(tok.grid) ** 2, int(tok.num_tokens)
  where = f"tokenizer {c.tokenizer!r} (keep_ratio={tok.keep_ratio}, grid={tok.grid}, K={k}, " \
          f"codebook_size={cb}, resolution={tok.resolution})"
  for name, want in (("keep_ratio", float(tok.keep_ratio)), ("grid", int(tok.grid)),
                     ("codebook_size", cb), ("num_tokens", k)):
    exp = c.expect.get(name, -1)
    if exp is not None and exp != -1 and not np.isclose(exp, want):
      raise ValueError(f"config.expect.{name}={exp} but {where} has {name}={want}")
  if m.n_classes < 0:
    raise ValueError(f"model.n_classes={m.n_classes} must be >= 0")
  if dense_lib.is_dense(c):
    dense_lib.check_config(c, where)
  vocab = (m.n_classes + cb + int(m.null_class)) if m.n_classes else cb + 1
  derived = {"vocab_size": vocab, "position_size": n_pos + 1}
  for name, want in derived.items():
    if m[name] and m[name] != want:
      raise ValueError(f"model.{name}={m[name]} does not match {where}: it needs {want}")
    m[name] = want
  if m.block_size and m.block_size < k:
    raise ValueError(f"model.block_size={m.block_size} is shorter than the K={k} tokens of {where}")
  if not m.block_size:  # authors: block_size = grid^2 (1024), whatever K is
    m.block_size = n_pos
  if c.input.res not in (-1, 0, None) and c.input.res != tok.resolution:
    raise ValueError(f"input.res={c.input.res} but {where} encodes {tok.resolution}px images")
  c.input.res = int(tok.resolution)
  text = c.text_encoder.enabled
  m.text_dim = int(c.text_encoder.d_model) if text else 0
  if text and m.n_classes:
    raise ValueError("text_encoder.enabled with model.n_classes > 0: choose one condition")
  if m.cond_dropout and not (text or m.null_class):
    raise ValueError(f"model.cond_dropout={m.cond_dropout} needs a null condition "
                     "(model.null_class=True with n_classes > 0, or a text model)")
  c.tokenizer = files.absolute(c.tokenizer)
  return c


def validate_config(config, num_devices: int, num_tokens: Optional[int] = None):
  """Rejects a bad (resolved) config before anything is traced or compiled."""
  div = loop.check_run_config(config, num_devices, evaluates=config.eval.every_steps > 0)
  if config.sample.num < 1:  # any other count is padded up to the batch shards (core/sharding.py)
    raise ValueError(f"sample.num={config.sample.num} must be >= 1")
  num_sampled = sharding_lib.padded_size("sample.num", config.sample.num, div)
  m = config.model
  check_execution_options(m)
  if m.d_model % m.n_heads:
    raise ValueError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
  if m.null_class and not m.n_classes:
    raise ValueError("model.null_class=True needs model.n_classes > 0")
  if not 0.0 <= m.cond_dropout < 1.0:
    raise ValueError(f"model.cond_dropout={m.cond_dropout} must be in [0, 1)")
  if config.optim.schedule not in ("warmup_cosine", "constant"):
    raise ValueError(f"optim.schedule={config.optim.schedule!r}; choose warmup_cosine or constant")
  if config.sample.every_steps and dense_lib.is_dense(config):
    sampling.validate_dense_sampling(
        DenseGPT(**dense_lib.model_kwargs(config.model)),
        dense_lib.sampler_config(config, num_tokens or 1), batch_size=num_sampled)
  elif config.sample.every_steps:
    n = num_sampled
    sampling.validate_stackformer_sampling(
        Stackformer(**_model_kwargs(config)), _sampler_config(config, num_tokens or 1),
        labels=np.zeros((n,), np.int32) if m.n_classes else None,
        text=np.zeros((n, 1, m.text_dim), np.float32) if m.text_dim else None,
        text_mask=np.ones((n, 1), bool) if m.text_dim else None,
        batch_size=n)


def check_execution_options(m):
  """model.scan_layers / remat_policy / attention_impl: ValueError naming a bad value."""
  scan = m.get("scan_layers", False)
  if not isinstance(scan, (bool, np.bool_)):
    raise ValueError(f"model.scan_layers={scan!r}: expected True or False")
  policy = m.get("remat_policy", "none")
  if policy not in transformer.REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={policy!r}; choose one of "
                     f"{', '.join(transformer.REMAT_POLICIES)}")
  impl = m.get("attention_impl", "xla")
  if impl not in transformer.ATTENTION_IMPLS:
    raise ValueError(f"model.attention_impl={impl!r}; choose one of "
                     f"{', '.join(transformer.ATTENTION_IMPLS)}")


def _model_kwargs(config) -> dict:
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.model.to_dict().items()}


def _sampler_config(config, steps: int) -> sampling.SamplerConfig:
  s = config.sample
  opt = lambda v, off: None if v is None or v <= off else v
  return sampling.SamplerConfig(
      steps=int(steps), temperature=float(s.temperature), top_k=opt(s.top_k, 0),
      top_p=opt(s.top_p, 0.0),
      position_temperature=None if s.position_temperature < 0 else float(s.position_temperature),
      position_top_k=opt(s.position_top_k, 0), position_top_p=opt(s.position_top_p, 0.0),
      guidance_scale=None if s.guidance_scale < 0 else float(s.guidance_scale))


# ===================================================================== construction
def decay_mask(tree):
  """True on dense kernels only (the authors' nn.Linear weights); biases, LayerNorm, embeddings
  and pos_emb are not decayed."""
  def is_kernel(path, _):
    keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]  # skips boxes' .value
    return bool(keys) and keys[-1] == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, tree)


def build(config, tokenizer) -> Parts:
  steps = loop.total_steps(config)
  o = config.optim
  lr = loop.schedule(config, loop.learning_rate(config), steps, loop.warmup_steps(config))
  tx = optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  dtype = loop.compute_dtype(config)  # "auto": bf16 on TPU/GPU, float32 on CPU
  te = config.text_encoder
  text = (text_lib.ByteTextEncoder(max_len=config.input.text_len, d_model=te.d_model,
                                   n_heads=te.n_heads, n_layers=te.n_layers, dropout=te.dropout,
                                   dtype=dtype) if te.enabled else None)
  if dense_lib.is_dense(config):
    model = DenseGPT(**dense_lib.model_kwargs(config.model), dtype=dtype)
  else:
    model = Stackformer(**_model_kwargs(config), dtype=dtype)
  return Parts(cfg=config, model=model, text=text, tokenizer=tokenizer, tx=tx, lr=lr,
               total_steps=steps)


def create_state(rng, parts: Parts) -> TrainState:
  """Initial (boxed) state; used under eval_shape and jit."""
  k_model, k_text, k_state = jax.random.split(rng, 3)
  tok = jnp.zeros((2, 2), jnp.int32)
  text_params, kw = None, {}
  if parts.text is not None:
    ids = jnp.full((2, parts.cfg.input.text_len), text_lib.BOS_ID, jnp.int32)
    text_params = parts.text.init(k_text, ids, ids != text_lib.PAD_ID)["params"]
    kw = dict(text=jnp.zeros((2, parts.cfg.input.text_len, parts.model.text_dim)),
              text_mask=jnp.ones((2, parts.cfg.input.text_len), bool))
  if isinstance(parts.model, DenseGPT):
    params = parts.model.init(k_model, tok)["params"]
  else:
    params = parts.model.init(k_model, tok, tok, tok, **kw)["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, text_params=text_params,
      opt_state=parts.tx.init({"model": params, "text": text_params}),
      ema_params=jax.tree.map(jnp.copy, params) if parts.cfg.param_ema > 0 else None,
      rng=k_state)


# ===================================================================== steps
def tokens_of(batch, tok_vars, parts: Parts, rng):
  """(codes [B, K], positions [B, K]) from exported tokens or the frozen tokenizer (eval mode)."""
  if "codes" in batch:
    return batch["codes"].astype(jnp.int32), batch["positions"].astype(jnp.int32)
  x = batch["image"].astype(jnp.float32) / 127.5 - 1.0
  codes, positions, _ = parts.tokenizer.apply(tok_vars, x, train=False, method="encode",
                                              rngs={"mask": rng})
  return jax.lax.stop_gradient(codes).astype(jnp.int32), positions.astype(jnp.int32)


def _loss_and_metrics(trainable, batch, tok_vars, parts: Parts, rng, *, train: bool,
                      valid=None):
  """(loss, metrics): means over the batch, or over its `valid` rows (bool [B]) when given."""
  k_tok, k_drop = jax.random.split(rng)
  codes, positions = tokens_of(batch, tok_vars, parts, k_tok)
  if isinstance(parts.model, DenseGPT):
    return dense_lib.loss_and_metrics(parts.model, trainable["model"], codes, positions, k_drop,
                                      train=train, valid=valid)
  labels = batch["label"] if parts.model.n_classes else None
  seq = split_sequences(*make_sequences(parts.model, codes, positions, labels=labels, sort=True))
  kw = {}
  if parts.text is not None:
    ids = batch["text_ids"]
    feats, mask = parts.text.apply({"params": trainable["text"]}, ids, ids != text_lib.PAD_ID,
                                   train=train, rngs={"dropout": jax.random.fold_in(k_drop, 1)})
    kw = dict(text=feats, text_mask=mask)
  code_logits, pos_logits = parts.model.apply(
      {"params": trainable["model"]}, seq["codes_in"], seq["pos_in"], seq["next_codes"],
      train=train, rngs={"dropout": k_drop}, **kw)
  loss, aux = losses_stage2.stackformer_loss(code_logits, pos_logits, seq["code_targets"],
                                             seq["position_targets"],
                                             parts.cfg.loss.position_weight, valid=valid)
  aux["code_acc"] = losses_stage2.row_mean(
      jnp.argmax(code_logits, -1) == seq["code_targets"], valid)
  aux["position_acc"] = losses_stage2.row_mean(
      jnp.argmax(pos_logits, -1) == seq["position_targets"], valid)
  return loss, aux


def train_step(state: TrainState, batch, tok_vars, *, parts: Parts):
  """One AdamW step. Returns (new state, dict of float32 scalars)."""
  cfg = parts.cfg
  rng = jax.random.fold_in(state.rng, state.step)
  trainable = {"model": state.params, "text": state.text_params}
  grad_fn = jax.value_and_grad(
      lambda t, b, r: _loss_and_metrics(t, b, tok_vars, parts, r, train=True), has_aux=True)
  n = loop.grad_accum_steps(cfg)
  if n == 1:
    (loss, aux), grads = grad_fn(trainable, batch, rng)
  else:  # mean of n micro-batch gradients == the batch's (losses are means); dropout keys per micro
    def micro(c, mb, i):
      (l, a), g = grad_fn(trainable, mb, jax.random.fold_in(rng, i))
      return c, (g, {"loss": l, **a})
    _, grads, aux = loop.accumulate(micro, (), loop.microbatches(batch, n), n)
    loss = aux.pop("loss")
  if cfg.debug_inject_nan_step >= 0:  # fault injection for the NaN guard's test
    loss = loss * jnp.where(state.step + 1 == cfg.debug_inject_nan_step, jnp.nan, 1.0)
  updates, opt_state = parts.tx.update(grads, state.opt_state, trainable)
  new = optax.apply_updates(trainable, updates)
  ema = state.ema_params
  if ema is not None:
    d = cfg.param_ema
    ema = jax.tree.map(lambda e, p: e * d + (1.0 - d) * p, ema, new["model"])
  new_state = state.replace(step=state.step + 1, params=new["model"], text_params=new["text"],
                            opt_state=opt_state, ema_params=ema)
  m = {"loss": loss, **{f"loss/{k}" if "loss" in k else k: v for k, v in aux.items()},
       "grad_norm": loop.tree_l2(grads), "param_norm": loop.tree_l2(new["model"]),
       "lr": parts.lr(state.step)}
  return new_state, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), m)


def make_train_step(parts: Parts, state_sh, batch_sh, repl) -> throughput.CountedStep:
  """`train_step` jitted with the run's shardings (state donated), compiled once ahead of time
  on its first call with its FLOP count; `fn(state, batch, tok_vars) -> (state, metrics)`."""
  return throughput.CountedStep(jax.jit(
      functools.partial(train_step, parts=parts), in_shardings=(state_sh, batch_sh, repl),
      out_shardings=(state_sh, repl), donate_argnums=(0,)))


def eval_step(state: TrainState, batch, tok_vars, *, parts: Parts):
  """Sums over the batch's real rows (`VALID`) of the validation losses (no dropout, conditions
  kept) of the eval params, and their "count"; padding rows change no metric."""
  params = state.ema_params if state.ema_params is not None else state.params
  batch = dict(batch)
  valid = batch.pop(sharding_lib.VALID, None)
  if valid is None:
    valid = jnp.ones((next(iter(batch.values())).shape[0],), bool)
  loss, aux = _loss_and_metrics({"model": params, "text": state.text_params}, batch, tok_vars,
                                parts, jax.random.key(0), train=False, valid=valid)
  count = jnp.sum(valid.astype(jnp.float32))
  sums = {k: jnp.asarray(v, jnp.float32) * count for k, v in {"loss": loss, **aux}.items()}
  return {**sums, "count": count}


# ===================================================================== sample grids
def sample_conditions(parts: Parts, num: int):
  """Fixed conditions of the periodic grids: labels (classes cycled) or prompts (cycled)."""
  cfg = parts.cfg
  if getattr(parts.model, "n_classes", 0):
    return {"labels": np.arange(num, dtype=np.int32) % parts.model.n_classes}
  if parts.text is not None:
    prompts = [p for p in cfg.sample.prompts.split("|") if p.strip()] or ["a photo"]
    ids, _ = text_lib.tokenize_bytes([prompts[i % len(prompts)] for i in range(num)],
                                     cfg.input.text_len)
    return {"text_ids": ids}
  return {}


def sample_rows(config, mesh, rules) -> int:
  """Rows the periodic sample grids compute: sample.num padded up to the batch shards (the
  padding rows come last and are dropped before the grid is written)."""
  return sharding_lib.padded_size("sample.num", config.sample.num,
                                  sharding_lib.batch_size_divisor(mesh, rules))


def make_sampler(parts: Parts, mesh, rules, state_sh):
  """fn(state, tok_vars, rng, conds) -> uint8 images [sample_rows, H, W, 3] (global array);
  `conds` from `sample_conditions(parts, sample_rows(...))`, the first sample.num rows real."""
  cfg = parts.cfg
  dense = isinstance(parts.model, DenseGPT)
  scfg = (dense_lib.sampler_config(cfg, parts.num_tokens) if dense
          else _sampler_config(cfg, parts.num_tokens))
  batch_sh = sharding_lib.batch_sharding(mesh, rules)
  repl = sharding_lib.replicated(mesh)
  num = sample_rows(cfg, mesh, rules)

  def decode(tok_vars, codes, positions):
    img = parts.tokenizer.apply(tok_vars, codes, positions, method="decode_codes")
    return recon.quantize_u8(img.astype(jnp.float32))

  decode_fn = jax.jit(decode, in_shardings=(repl, batch_sh, batch_sh), out_shardings=batch_sh)
  text_fn = None
  if parts.text is not None:
    text_fn = jax.jit(lambda p, ids: parts.text.apply({"params": p}, ids, ids != text_lib.PAD_ID),
                      in_shardings=(state_sh.text_params, batch_sh))

  def run(state, tok_vars, rng, conds):
    params = state.ema_params if state.ema_params is not None else state.params
    kw = {}
    if "labels" in conds:
      kw["labels"] = jax.device_put(conds["labels"], batch_sh)
    elif "text_ids" in conds:
      kw["text"], kw["text_mask"] = text_fn(state.text_params,
                                            jax.device_put(conds["text_ids"], batch_sh))
    else:
      kw["batch_size"] = num
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      if dense:
        s = dense_lib.sample(parts.model, {"params": params}, rng, scfg, num)
      else:
        s = sampling.sample(parts.model, {"params": params}, rng, scfg, **kw)
      return decode_fn(tok_vars, jax.device_put(s.codes, batch_sh),
                       jax.device_put(s.positions, batch_sh)), s
  return run


def image_grid(images: np.ndarray, cols: Optional[int] = None) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 [rows*H, cols*W, 3] grid (blank cells padded)."""
  n, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = -(-n // cols)
  pad = np.zeros((rows * cols - n, h, w, c), np.uint8)
  g = np.concatenate([images, pad]).reshape(rows, cols, h, w, c)
  return g.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


# ===================================================================== train
def _run_meta(config, step, mesh, tok_info) -> dict:
  meta = loop.run_meta(config, step, mesh)
  meta["tokenizer"] = {k: v for k, v in tok_info.items() if isinstance(v, (int, float, str, bool))}
  return meta


def layout_adapter(parts: Parts, rng, mesh, rules, state_sh):
  """checkpointing.LayoutAdapter for `model.scan_layers`: a checkpoint written with the other
  layer layout is restored in its own layout and converted to this run's (params, EMA and
  optimizer moments, `transformer.relayout_tree`), resharded onto `state_sh`. Same weights, so a
  run saved unrolled resumes scanned and the other way round (also through `config.resume`).
  """
  model = parts.model

  def adapt(meta: dict):
    stored = bool(((meta.get("config") or {}).get("model") or {}).get("scan_layers", False))
    if stored == bool(model.scan_layers):
      return None
    stored_parts = dataclasses.replace(parts, model=model.clone(scan_layers=stored))
    abstract, _ = sharding_lib.state_shardings(
        functools.partial(create_state, parts=stored_parts), rng, mesh=mesh, rules=rules)
    logging.info("checkpoint written with model.scan_layers=%s; converting it to scan_layers=%s",
                 stored, model.scan_layers)
    convert = jax.jit(functools.partial(transformer.relayout_tree, stacks=model.layer_stacks,
                                        scanned=bool(model.scan_layers)),
                      out_shardings=state_sh)  # (stacked leaves change shape: no donation)
    return abstract, convert
  return adapt


def _resume_check(config, tok_info):
  """Stored config and tokenizer geometry must match this run's (core/resume_guard.py)."""
  geometry = {k: tok_info[k] for k in ("tokens_per_image", "keep_ratio", "grid", "codebook_size")}
  return resume_guard.checker(config, extra={"tokenizer": geometry})


def train(config: "ml_collections.ConfigDict", workdir: str) -> dict:
  """Trains (or resumes) stage 2 in `workdir`. Returns a summary dict (used by tests).

  Holds the workdir's lock for the whole run (core/workdir_lock.py).
  """
  # outside the loop a SIGTERM ends the run with status 143 and the lock released (core/loop.py)
  with loop.exit_on_sigterm(), workdir_lock.hold(workdir, config):
    return _train(config, workdir)


def _train(config: "ml_collections.ConfigDict", workdir: str) -> dict:
  from maskvq_jax.core import writers  # pylint: disable=g-import-not-at-top  # imports TF via CLU
  from maskvq_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  from maskvq_jax.data import tokens as stage2_data  # pylint: disable=g-import-not-at-top

  tokenizer, tok_vars_host, tok_info = load_tokenizer(config)
  with cli.user_input(ValueError):  # the user's config: one `error:` line, not a traceback
    config = resolve_config(config, tokenizer)
    validate_config(config, jax.device_count(), tokenizer.num_tokens)
    sharding_lib.check_process_batches(sharding_lib.make_mesh(config.mesh),
                                       sharding_lib.get_rules(config.sharding_rules))
  input_pipeline.SKIPPED.reset()  # the metric counts this run's skipped images only
  if config.input.tokens_dir:
    meta = stage2_data.tokens_meta(config.input.tokens_dir)
    if meta.get("num_tokens") != tokenizer.num_tokens or meta.get("model") != \
        ckpt_loader.tokenizer_info(tokenizer):
      raise ValueError(f"input.tokens_dir={config.input.tokens_dir!r} was exported with tokenizer "
                       f"{meta.get('tokenizer')!r} ({meta.get('model')}), not with "
                       f"{config.tokenizer!r} ({ckpt_loader.tokenizer_info(tokenizer)})")
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.get_rules(config.sharding_rules)
  parts = build(config, tokenizer)
  total = parts.total_steps
  logging.info("stage 2 on tokenizer %s: K=%d, grid %d, codebook %d; model %s; %d steps",
               config.tokenizer, tokenizer.num_tokens, tokenizer.grid, tokenizer.codebook_size,
               config.model.to_dict(), total)

  rng = jax.random.PRNGKey(config.seed)
  create = functools.partial(create_state, parts=parts)
  abstract, state_sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  batch_sh = sharding_lib.batch_sharding(mesh, rules)
  repl = sharding_lib.replicated(mesh)
  logging.info("state shardings: %s", sharding_lib.spec_summary(state_sh))
  tok_vars = jax.device_put(tok_vars_host, repl)  # host numpy: each process puts its copy

  workdir = files.makedirs(workdir)  # absolute if local; a URL (gs://...) stays a URL
  ckpt = checkpointing.Checkpointer(
      files.join(workdir, "checkpoints"), save_every=config.ckpt_every_steps,
      max_to_keep=config.max_to_keep, keep_every=config.keep_every_steps,
      async_save=config.async_checkpointing)
  need_label, text_len = bool(config.model.n_classes), (
      config.input.text_len if parts.text is not None else 0)
  data = stage2_data.train_iter(config, batch_sh, need_label=need_label, text_len=text_len)

  # ---- resume order: workdir -> config.resume -> scratch
  state = loop.restore_or_create(ckpt, abstract, config.resume, data, create, rng, mesh, rules,
                                   state_sh, check=_resume_check(config, tok_info),
                                   adapt=layout_adapter(parts, rng, mesh, rules, state_sh))
  first = int(jax.device_get(state.step))

  step_fn = make_train_step(parts, state_sh, batch_sh, repl)
  meter = throughput.Meter(examples_per_step=config.input.batch_size,
                           tokens_per_example=parts.num_tokens, step_fn=step_fn)
  eval_fn = jax.jit(functools.partial(eval_step, parts=parts),
                    in_shardings=(state_sh, batch_sh, repl), out_shardings=repl)
  sampler = make_sampler(parts, mesh, rules, state_sh) if config.sample.every_steps else None
  conds = sample_conditions(parts, sample_rows(config, mesh, rules))
  if config.sample.every_steps:
    sharding_lib.padded_size("sample.num", config.sample.num,
                             sharding_lib.batch_size_divisor(mesh, rules), note=True)
  if config.eval.every_steps:
    sharding_lib.padded_size("eval.batch_size", config.eval.batch_size,
                             sharding_lib.batch_size_divisor(mesh, rules), note=True)

  writer = writers.Writer(workdir, total_steps=total, log_every=config.log_every_steps,
                          profile=config.get("profile", False))
  n_params = loop.num_params(state.params)
  logging.info("Stackformer: %.2fM parameters", n_params / 1e6)
  if first == 0 and config.get("param_overview", True):  # every process: a sharded reduction
    writer.parameter_overview(state.params, "stackformer")
  writer.hparams({"num_params/stackformer": n_params, "tokens_per_image": parts.num_tokens})

  def run_eval(step, state):
    it, n = stage2_data.eval_iter(config, batch_sh, need_label=need_label, text_len=text_len)
    sums = None
    for _ in range(n):
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        m = eval_fn(state, next(it), tok_vars)
      sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    sums = jax.device_get(sums)
    count = max(float(sums.pop("count")), 1.0)  # real examples only: padding rows are not counted
    out = {k: float(v) / count for k, v in sums.items()}
    writer.scalars(step, {f"eval/{k}": v for k, v in out.items()})
    return out

  def run_samples(step, state):
    t = time.time()
    imgs, _ = sampler(state, tok_vars, jax.random.key(config.sample.seed), conds)
    imgs = sharding_lib.to_host(imgs)[:config.sample.num]  # the padding rows (if any) come last
    secs = time.time() - t
    writer.images(step, {"samples": image_grid(imgs)})
    writer.scalars(step, {"sample/seconds": secs})
    return imgs

  summary = train_loop.run(
      config=config, state=state, first=first, total=total, step_fn=step_fn,
      step_args=(tok_vars,), data=data, mesh=mesh, rules=rules, ckpt=ckpt, writer=writer,
      meter=meter, meta=lambda step: _run_meta(config, step, mesh, tok_info),
      console=("loss", "loss/code_loss", "loss/position_loss"),
      periodic=[train_loop.Periodic("eval", config.eval.every_steps, run_eval, initial={},
                                    in_mesh=False, enabled=config.eval.every_steps > 0),
                train_loop.Periodic("samples", config.sample.every_steps, run_samples,
                                    in_mesh=False, enabled=sampler is not None)])
  return {**summary, "config": config}
