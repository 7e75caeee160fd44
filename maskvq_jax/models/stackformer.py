"""Stackformer: the stage-2 prior over (code, position) pairs of an MQ-VAE image.

The authors' `ReverseStackedPositionGPT` models a kept-region sequence
`[(v_0, p_0), (v_1, p_1), ..., (v_T, p_T)]` (v_0 = sos or class token, p_0 = the sos position N)
with two causal transformers stacked per step:

  * Code-Transformer: input_t = code_emb(v_t) + grid_pos_emb(p_t) + seq_pos_emb[t]; its hidden
    state h_t predicts the next code v_{t+1}.
  * Position-Transformer: input_t = h_t + code_emb(v_{t+1}) (same code table, teacher-forced next
    code, no dropout, no sequence embedding); its hidden state predicts the next position p_{t+1}.

This file keeps that exact computation (pre-LN minGPT blocks, separate q/k/v with bias, exact GELU,
LayerNorm eps 1e-5, N(0, 0.02) init) so official checkpoints load one-to-one, and adds what the
original lacks: a KV-cached one-token-at-a-time path for both transformers (used by
`maskvq_jax.stage2.sampling`), cross-attention to text features and a learned null condition for
classifier-free guidance. `Attention` and `Block` are shared with the dense baseline and the byte
text encoder, so all three run the same attention code.
"""
import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
KVCache = list  # One {"k": [B, H, L, Dh], "v": [B, H, L, Dh]} dict per layer.
Context = tuple  # Cross-attention inputs: (per-layer [(k, v)], mask [B, Lc] bool).

_INIT = nn.initializers.normal(stddev=0.02)
_ZEROS = nn.initializers.zeros_init()
_ONES = nn.initializers.ones_init()
_LN_EPS = 1e-5  # torch.nn.LayerNorm default.

ACT_NAMES = ("batch", "length", "embed")
ATTENTION_IMPLS = ("xla", "dot_product")
# Cache layout [B, H, L, Dh] (heads before length): the per-step q.k^T and weights.v contractions
# then read the cache in place; [B, L, H, Dh] made XLA transpose every layer's cache every step
# (4x slower decode on CPU at L = 256).
CACHE_NAMES = ("batch", "heads", "length", "head_dim")


def _promote_keep_kernel(inputs, kernel, bias, *, dtype=None):
  """Flax's promote_dtype, except that a lower-precision (e.g. bf16 decode) kernel stays as is.

  Decoding one token at a time is bound by reading the weights; `sampling` can hand the model
  bf16 kernels (half the bytes) while activations stay in `dtype`. Casting the kernel back up
  here would re-read and re-write it at every step.
  """
  inputs, bias = nn.dtypes.promote_dtype(inputs, bias, dtype=dtype)
  if jnp.finfo(kernel.dtype).bits >= jnp.finfo(inputs.dtype).bits:
    kernel = kernel.astype(inputs.dtype)
  return inputs, kernel, bias


def _mixed_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """dot_general; with a lower-precision rhs (kernel), multiplies in its dtype and accumulates
  in the lhs dtype. With equal dtypes it is exactly lax.dot_general."""
  if lhs.dtype == rhs.dtype:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return jax.lax.dot_general(lhs.astype(rhs.dtype), rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type or lhs.dtype)


def _f32_out_dot(lhs, rhs, dimension_numbers, precision=None):
  """_mixed_dot accumulating into and returning float32 (output heads: logits before the CE)."""
  return _mixed_dot(lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32)


def _dense(features, names, *, use_bias=True, dtype=jnp.float32, name=None, f32_out=False):
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(_INIT, names),
      bias_init=nn.with_logical_partitioning(_ZEROS, names[-1:]),
      promote_dtype=_promote_keep_kernel, dot_general=_f32_out_dot if f32_out else _mixed_dot)


def _layer_norm(dtype, name=None):
  # use_fast_variance=False: torch computes the variance as mean((x - mean)^2).
  return nn.LayerNorm(
      epsilon=_LN_EPS, dtype=dtype, use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(_ONES, ("embed",)),
      bias_init=nn.with_logical_partitioning(_ZEROS, ("embed",)))


def causal_mask(q_len: int, k_len: int, offset=0) -> jax.Array:
  """[1, 1, q_len, k_len] bool: query i (absolute offset + i) may see keys 0..offset + i."""
  q_pos = offset + jnp.arange(q_len)[:, None]
  return (jnp.arange(k_len)[None, :] <= q_pos)[None, None]


def init_kv_cache(n_layers: int, batch: int, length: int, n_heads: int, head_dim: int,
                  dtype: Dtype = jnp.float32) -> KVCache:
  """Zero KV cache, one {"k", "v"} pair of [B, H, L, Dh] per layer (static shapes)."""
  def zeros():
    return nn.with_logical_constraint(jnp.zeros((batch, n_heads, length, head_dim), dtype),
                                      CACHE_NAMES)
  return [{"k": zeros(), "v": zeros()} for _ in range(n_layers)]


def grow_kv_cache(cache: KVCache, length: int) -> KVCache:
  """The cache with its length axis zero-padded to `length` (entries kept in place).

  The sampler decodes in buckets of steps with growing static cache lengths, so early steps
  attend over (and read) a short cache instead of the final one; see `sampling`.
  """
  def grow(x):
    pad = length - x.shape[2]
    if pad < 0:
      raise ValueError(f"cannot shrink a KV cache of length {x.shape[2]} to {length}")
    x = jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else x
    return nn.with_logical_constraint(x, CACHE_NAMES)
  return [{name: grow(x) for name, x in layer.items()} for layer in cache]


class Attention(nn.Module):
  """minGPT multi-head attention: separate q/k/v Linear (with bias), scale 1/sqrt(head_dim).

  Used for causal self-attention (optionally writing into a KV cache) and for cross-attention
  onto precomputed context keys/values (`kv` + `attend`).
  """
  d_model: int
  n_heads: int
  attn_dropout: float = 0.0
  resid_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  # "xla": einsum + float32 softmax (exact official numerics); "dot_product":
  # jax.nn.dot_product_attention (cuDNN flash attention on GPUs where it applies). The fused path
  # has no attention-weight dropout, so it is used only when that dropout is inactive.
  impl: str = "xla"

  def setup(self):
    if self.impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.impl!r}; choose one of {ATTENTION_IMPLS}")
    self.query = _dense(self.d_model, ("embed", "heads"), dtype=self.dtype)
    self.key = _dense(self.d_model, ("embed", "heads"), dtype=self.dtype)
    self.value = _dense(self.d_model, ("embed", "heads"), dtype=self.dtype)
    self.proj = _dense(self.d_model, ("heads", "embed"), dtype=self.dtype)
    self.attn_drop = nn.Dropout(self.attn_dropout)
    self.resid_drop = nn.Dropout(self.resid_dropout)

  def _split(self, x):  # [B, S, D] -> [B, H, S, Dh]
    x = x.reshape(x.shape[:-1] + (self.n_heads, self.d_model // self.n_heads))
    return jnp.swapaxes(x, 1, 2)

  def q(self, x):
    return self._split(self.query(x))

  def kv(self, x):
    """Keys and values of `x` [B, L, Din], each [B, H, L, Dh]."""
    return self._split(self.key(x)), self._split(self.value(x))

  def attend(self, q, k, v, mask, *, train: bool):
    """q [B, H, S, Dh], k/v [B, H, L, Dh], mask broadcastable to [B, H, S, L] -> [B, S, D].

    mask None means causal over equal-length q and k (the teacher-forced forward).
    """
    scale = 1.0 / np.sqrt(q.shape[-1])
    if self.impl == "dot_product" and not (train and self.attn_dropout > 0):
      t = lambda a: jnp.swapaxes(a, 1, 2)  # [B, H, S, Dh] -> [B, S, H, Dh]
      y = jax.nn.dot_product_attention(t(q), t(k).astype(q.dtype), t(v).astype(q.dtype), scale=scale,
                                       mask=mask, is_causal=mask is None)
      y = y.reshape(y.shape[:2] + (self.d_model,))
      return self.resid_drop(self.proj(y), deterministic=not train)
    if mask is None:
      mask = causal_mask(q.shape[2], k.shape[2])
    # float32 island: scores accumulate and stay in float32 (bf16 q.k^T loses the softmax's tails)
    logits = jnp.einsum("bhsd,bhld->bhsl", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = self.attn_drop(weights, deterministic=not train)
    y = jnp.einsum("bhsl,bhld->bshd", weights, v)  # [B, S, H, Dh]
    y = y.reshape(y.shape[:2] + (self.d_model,))
    return self.resid_drop(self.proj(y), deterministic=not train)

  def _fused_qkv(self, x):
    """q, k, v of x [B, S, D] from ONE matmul against the concatenated [D, 3D] kernels.

    Used while decoding (one token per step): each small matmul there costs a fixed dispatch
    overhead comparable to its arithmetic, so three become one. The concatenation is loop
    invariant (XLA hoists it out of the decode loop). Same products as the three Dense layers.
    """
    ps = [m.variables["params"] for m in (self.query, self.key, self.value)]
    kernel = jnp.concatenate([nn.meta.unbox(p["kernel"]) for p in ps], axis=-1)
    bias = jnp.concatenate([nn.meta.unbox(p["bias"]) for p in ps], axis=-1)
    x, kernel, bias = _promote_keep_kernel(x, kernel, bias, dtype=self.dtype)
    y = _mixed_dot(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias
    return tuple(self._split(t) for t in jnp.split(y, 3, axis=-1))

  def __call__(self, x, mask, *, train: bool, cache: Optional[dict] = None, index=None):
    """Self-attention of x [B, S, D]. With `cache`, x sits at sequence offset `index`."""
    if cache is not None and not self.is_initializing():
      q, k, v = self._fused_qkv(x)
    else:
      q = self.q(x)
      k, v = self.kv(x)
    new_cache = None
    if cache is not None:
      start = (0, 0, index, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      k = nn.with_logical_constraint(k, CACHE_NAMES)
      v = nn.with_logical_constraint(v, CACHE_NAMES)
      new_cache = {"k": k, "v": v}
    return self.attend(q, k.astype(self.dtype), v.astype(self.dtype), mask, train=train), new_cache


class Block(nn.Module):
  """Pre-LN transformer block: x + Attn(LN1 x) [+ CrossAttn(LNc x)] + MLP(LN2 x).

  MLP = Linear(d, 4d) -> exact GELU -> Linear(4d, d) -> Dropout, as minGPT / the authors.
  """
  d_model: int
  n_heads: int
  attn_dropout: float = 0.0
  resid_dropout: float = 0.0
  cross_attention: bool = False
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  def setup(self):
    self.ln1 = _layer_norm(self.dtype)
    self.attn = Attention(self.d_model, self.n_heads, self.attn_dropout, self.resid_dropout,
                          self.dtype, self.attention_impl)
    if self.cross_attention:
      self.ln_cross = _layer_norm(self.dtype)
      self.cross_attn = Attention(self.d_model, self.n_heads, self.attn_dropout,
                                  self.resid_dropout, self.dtype)
    self.ln2 = _layer_norm(self.dtype)
    self.mlp_fc = _dense(4 * self.d_model, ("embed", "mlp"), dtype=self.dtype)
    self.mlp_out = _dense(self.d_model, ("mlp", "embed"), dtype=self.dtype)
    self.mlp_drop = nn.Dropout(self.resid_dropout)

  def context_kv(self, context):
    """Cross-attention keys/values of the context [B, Lc, Dc] (computed once per sequence)."""
    return self.cross_attn.kv(context)

  def __call__(self, x, mask, *, train: bool, cache=None, index=None, context=None):
    """x [B, S, D] -> ([B, S, D], new cache or None). context = (k, v, mask [B, 1, 1, Lc])."""
    y, new_cache = self.attn(self.ln1(x), mask, train=train, cache=cache, index=index)
    x = x + y
    if self.cross_attention:
      ck, cv, cmask = context
      q = self.cross_attn.q(self.ln_cross(x))
      x = x + self.cross_attn.attend(q, ck, cv, cmask, train=train)
    h = nn.gelu(self.mlp_fc(self.ln2(x)), approximate=False)
    x = x + self.mlp_drop(self.mlp_out(h), deterministic=not train)
    return nn.with_logical_constraint(x, ACT_NAMES), new_cache


class StackBlock(Block):
  """`Block` with `train` positional, so `nn.remat` can treat it as static (argnum 3)."""

  def __call__(self, x, mask, train, cache=None, index=None, context=None):  # pylint: disable=arguments-differ
    return super().__call__(x, mask, train=train, cache=cache, index=index, context=context)


RematStackBlock = nn.remat(StackBlock, static_argnums=(3,))


class Stackformer(nn.Module):
  """Code-Transformer + Position-Transformer (the authors' ReverseStackedPositionGPT).

  Token layout (official):
    * unconditional (n_classes == 0): codes 0..C-1, sos code C = vocab_size - 1.
    * class-conditional: class tokens 0..n_classes-1 replace sos; codes are shifted by n_classes.
      With `null_class`, the last vocabulary row is a learned "no class" token (classifier-free
      guidance); vocab_size = n_classes + C (+ 1).
    * text-conditional (text_dim > 0): unconditional layout plus cross-attention in every block of
      both transformers onto text features [B, Lt, text_dim]; a learned null text embedding
      replaces dropped captions.
    * positions 0..N-1, sos position N = position_size - 1.

  Fields mirror the official config: vocab_size, position_size, block_size, d_model (n_embd),
  n_heads (n_head), code_layers (value_layer), position_layers (position_layer), dropouts.
  """
  vocab_size: int
  position_size: int
  block_size: int
  d_model: int = 256
  n_heads: int = 8
  code_layers: int = 12
  position_layers: int = 12
  embd_dropout: float = 0.0
  resid_dropout: float = 0.0
  attn_dropout: float = 0.0
  n_classes: int = 0
  null_class: bool = False
  text_dim: int = 0
  cond_dropout: float = 0.0
  use_abs_pos: bool = True
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"  # or "dot_product" (jax.nn.dot_product_attention); see Attention
  remat: bool = False  # recompute each block's activations in the backward pass (saves memory)

  # ----- token layout -------------------------------------------------------------------------
  @property
  def code_offset(self) -> int:
    """Vocabulary id of code 0."""
    return self.n_classes

  @property
  def codebook_size(self) -> int:
    if self.n_classes:
      return self.vocab_size - self.n_classes - int(self.null_class)
    return self.vocab_size - 1

  @property
  def sos_token(self) -> int:
    """First code token of unconditional / text models."""
    return self.vocab_size - 1

  @property
  def null_class_token(self) -> int:
    return self.vocab_size - 1

  @property
  def sos_position(self) -> int:
    return self.position_size - 1

  @property
  def num_positions(self) -> int:
    return self.position_size - 1

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  # ----- modules ------------------------------------------------------------------------------
  def setup(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
    if self.code_layers < 1 or self.position_layers < 1:
      raise ValueError(f"need >= 1 layer per transformer, got code_layers={self.code_layers}, "
                       f"position_layers={self.position_layers}")
    if self.null_class and not self.n_classes:
      raise ValueError("null_class=True needs n_classes > 0")
    if self.codebook_size < 1:
      raise ValueError(f"vocab_size={self.vocab_size} leaves no code tokens")
    emb_init = nn.with_logical_partitioning(_INIT, ("vocab", "embed"))
    self.value_emb = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype,
                              embedding_init=emb_init)
    self.value_pos_emb = nn.Embed(self.position_size, self.d_model, dtype=self.dtype,
                                  embedding_init=emb_init)
    if self.use_abs_pos:
      self.pos_emb = self.param("pos_emb", nn.with_logical_partitioning(_ZEROS, ("length", "embed")),
                                (self.block_size, self.d_model), jnp.float32)
    if self.text_dim:
      self.null_text = self.param("null_text", nn.with_logical_partitioning(_INIT, ("embed",)),
                                  (self.text_dim,), jnp.float32)
    block_cls = RematStackBlock if self.remat else StackBlock
    block = lambda: block_cls(self.d_model, self.n_heads, self.attn_dropout, self.resid_dropout,
                              bool(self.text_dim), self.dtype, self.attention_impl)
    self.code_blocks = [block() for _ in range(self.code_layers)]
    self.position_blocks = [block() for _ in range(self.position_layers)]
    self.code_head_ln = _layer_norm(self.dtype)
    self.code_head = _dense(self.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype,
                            f32_out=True)
    self.position_head_ln = _layer_norm(self.dtype)
    self.position_head = _dense(self.position_size, ("embed", "vocab"), use_bias=False,
                                dtype=self.dtype, f32_out=True)
    self.embed_drop = nn.Dropout(self.embd_dropout)

  # ----- shared pieces ------------------------------------------------------------------------
  def _code_input(self, codes, positions, offset, length):
    x = self.value_emb(codes) + self.value_pos_emb(positions)  # [B, S, D]
    if self.use_abs_pos:
      pos = jax.lax.dynamic_slice_in_dim(self.pos_emb, offset, length, axis=0)  # [S, D]
      x = x + pos.astype(self.dtype)[None]
    return nn.with_logical_constraint(x, ACT_NAMES)

  def _run(self, blocks, x, mask, *, train, caches=None, index=None, context=None):
    new_caches = []
    for i, blk in enumerate(blocks):
      ctx = None
      if context is not None:
        kvs, cmask = context
        ctx = (kvs[i][0], kvs[i][1], cmask[:, None, None, :])
      x, c = blk(x, mask, train, cache=None if caches is None else caches[i], index=index,
                 context=ctx)
      new_caches.append(c)
    return x, new_caches

  def _code_logits(self, h):
    return self.code_head(self.code_head_ln(h)).astype(jnp.float32)

  def _position_logits(self, g):
    return self.position_head(self.position_head_ln(g)).astype(jnp.float32)

  def _drop_mask(self, batch, drop_cond, train):
    """[B] bool: which examples lose their condition (classifier-free guidance training)."""
    if drop_cond is not None:
      return drop_cond
    if train and self.cond_dropout > 0:
      return jax.random.bernoulli(self.make_rng("dropout"), self.cond_dropout, (batch,))
    return None

  def encode_context(self, text, text_mask, drop_cond=None, *, train: bool = False) -> Context:
    """Cross-attention keys/values of both transformers from text features [B, Lt, text_dim].

    Dropped captions (drop_cond [B] True) become the learned null text embedding at slot 0 only.
    """
    if not self.text_dim:
      raise ValueError("this Stackformer has text_dim=0 (no text conditioning)")
    text_mask = text_mask.astype(bool)
    drop = self._drop_mask(text.shape[0], drop_cond, train)
    if drop is not None:
      null = jnp.broadcast_to(self.null_text.astype(text.dtype), text.shape)
      text = jnp.where(drop[:, None, None], null, text)
      first = jnp.arange(text.shape[1]) == 0
      text_mask = jnp.where(drop[:, None], first[None], text_mask)
    text = text.astype(self.dtype)
    code = [blk.context_kv(text) for blk in self.code_blocks]
    pos = [blk.context_kv(text) for blk in self.position_blocks]
    return (code, text_mask), (pos, text_mask)

  # ----- teacher-forced forward (training / official parity) ----------------------------------
  def __call__(self, codes_in, pos_in, next_codes, *, train: bool = False, text=None,
               text_mask=None, drop_cond=None):
    """Official teacher-forced forward.

    Args:
      codes_in: [B, T] idx[:, :-1] = (sos or class, v_1 .. v_{T-1}) in vocabulary ids.
      pos_in: [B, T] pos_idx[:, :-1] = (N, p_1 .. p_{T-1}).
      next_codes: [B, T] idx[:, 1:] = (v_1 .. v_T), fed to the Position-Transformer.
      train: enables dropout and condition dropout (rng stream "dropout").
      text, text_mask: [B, Lt, text_dim], [B, Lt] for text-conditional models.
      drop_cond: optional [B] bool, True = drop the condition (class -> null token, text -> null).

    Returns:
      (code_logits [B, T, vocab_size] predicting next_codes,
       position_logits [B, T, position_size] predicting pos_idx[:, 1:]).
    """
    t = codes_in.shape[1]
    if t > self.block_size:
      raise ValueError(f"sequence length {t} exceeds block_size={self.block_size}")
    code_ctx = pos_ctx = None
    if self.text_dim:
      if text is None:
        raise ValueError("text-conditional Stackformer needs text features")
      code_ctx, pos_ctx = self.encode_context(text, text_mask, drop_cond, train=train)
    elif self.n_classes and self.null_class:
      drop = self._drop_mask(codes_in.shape[0], drop_cond, train)
      if drop is not None:
        first = jnp.where(drop, self.null_class_token, codes_in[:, 0])
        codes_in = codes_in.at[:, 0].set(first.astype(codes_in.dtype))
    mask = None  # causal; lets the fused attention use its causal kernel
    x = self.embed_drop(self._code_input(codes_in, pos_in, 0, t), deterministic=not train)
    h, _ = self._run(self.code_blocks, x, mask, train=train, context=code_ctx)  # [B, T, D]
    w = nn.with_logical_constraint(h + self.value_emb(next_codes), ACT_NAMES)
    g, _ = self._run(self.position_blocks, w, mask, train=train, context=pos_ctx)
    return self._code_logits(h), self._position_logits(g)

  # ----- KV-cached decoding -------------------------------------------------------------------
  def init_cache(self, batch: int, length: int, dtype: Dtype = jnp.float32):
    """Empty (code_cache, position_cache) for `length` steps. Needs no params (call unbound)."""
    return (init_kv_cache(self.code_layers, batch, length, self.n_heads, self.head_dim, dtype),
            init_kv_cache(self.position_layers, batch, length, self.n_heads, self.head_dim, dtype))

  def code_step(self, cache: KVCache, codes, positions, index, context: Optional[Context] = None):
    """Code-Transformer on tokens at sequence offset `index` with a KV cache (eval mode).

    Args:
      cache: code cache from `init_cache`, holding steps < index.
      codes, positions: [B, S] the tokens (v_t, p_t) for t = index .. index + S - 1.
      index: int32 scalar offset.
      context: code half of `encode_context` (text models).

    Returns:
      (code_logits [B, S, V] predicting v_{t+1}, hidden [B, S, D], new cache).
    """
    s = codes.shape[1]
    x = self._code_input(codes, positions, index, s)
    mask = causal_mask(s, cache[0]["k"].shape[2], index)
    h, new_cache = self._run(self.code_blocks, x, mask, train=False, caches=cache, index=index,
                             context=context)
    return self._code_logits(h), h, new_cache

  def position_step(self, cache: KVCache, hidden, next_codes, index,
                    context: Optional[Context] = None):
    """Position-Transformer on hidden [B, S, D] + emb(next_codes [B, S]) at offset `index`.

    Returns (position_logits [B, S, P] predicting p_{t+1}, new cache).
    """
    s = next_codes.shape[1]
    w = nn.with_logical_constraint(hidden + self.value_emb(next_codes), ACT_NAMES)
    mask = causal_mask(s, cache[0]["k"].shape[2], index)
    g, new_cache = self._run(self.position_blocks, w, mask, train=False, caches=cache,
                             index=index, context=context)
    return self._position_logits(g), new_cache


def make_sequences(model: Stackformer, codes, positions, *, labels=None, sort: bool = True):
  """Builds the official (idx, pos_idx) [B, K+1] from codes [B, K] (0..C-1) and positions [B, K].

  With `sort`, pairs are put in raster order of their positions (the authors' raster_scan_permuter).
  The first token is the sos code (unconditional / text) or the class label (class models).
  """
  codes = jnp.asarray(codes)
  positions = jnp.asarray(positions)
  if sort:
    order = jnp.argsort(positions, axis=-1)
    positions = jnp.take_along_axis(positions, order, axis=-1)
    codes = jnp.take_along_axis(codes, order, axis=-1)
  b = codes.shape[0]
  if model.n_classes:
    if labels is None:
      raise ValueError("class-conditional Stackformer needs labels")
    first = jnp.asarray(labels).reshape(b, 1).astype(codes.dtype)
  else:
    first = jnp.full((b, 1), model.sos_token, codes.dtype)
  idx = jnp.concatenate([first, codes + model.code_offset], axis=1)
  pos_idx = jnp.concatenate([jnp.full((b, 1), model.sos_position, positions.dtype), positions],
                            axis=1)
  return idx, pos_idx


def split_sequences(idx, pos_idx) -> dict:
  """Official (idx, pos_idx) [B, T+1] -> the model inputs and the training targets."""
  return dict(codes_in=idx[:, :-1], pos_in=pos_idx[:, :-1], next_codes=idx[:, 1:],
              code_targets=idx[:, 1:], position_targets=pos_idx[:, 1:])
