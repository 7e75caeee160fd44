"""Transformer pieces shared by the stage-2 models (Stackformer, dense GPT, byte text encoder).

One copy of the minGPT block the authors use (pre-LN, separate q/k/v Linear with bias, exact
GELU, LayerNorm eps 1e-5, N(0, 0.02) init), its KV cache, and the loop that runs a stack of
blocks, so the three models run the same attention code and keep the official parameter names
(`<stack>_<i>/{ln1, attn/{query, key, value, proj}, ln2, mlp_fc, mlp_out}`).
"""
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
KVCache = list  # One {"k": [B, H, L, Dh], "v": [B, H, L, Dh]} dict per layer.
Context = tuple  # Cross-attention inputs: (per-layer [(k, v)], mask [B, Lc] bool).
Layers = Union[Sequence[nn.Module], nn.Module]  # What `make_layers` returns.

INIT = nn.initializers.normal(stddev=0.02)
ZEROS = nn.initializers.zeros_init()
ONES = nn.initializers.ones_init()
LN_EPS = 1e-5  # torch.nn.LayerNorm default.

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
                             preferred_element_type=lhs.dtype)


def dense(features, names, *, use_bias=True, dtype=jnp.float32, name=None):
  """torch-initialised Linear with logical axis names `names` (kernel) / names[-1:] (bias)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(INIT, names),
      bias_init=nn.with_logical_partitioning(ZEROS, names[-1:]),
      promote_dtype=_promote_keep_kernel, dot_general=_mixed_dot)


def layer_norm(dtype, name=None):
  """torch.nn.LayerNorm over the last ("embed") axis."""
  # use_fast_variance=False: torch computes the variance as mean((x - mean)^2).
  return nn.LayerNorm(
      epsilon=LN_EPS, dtype=dtype, use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(ONES, ("embed",)),
      bias_init=nn.with_logical_partitioning(ZEROS, ("embed",)))


def add_positions(x, table, offset=0):
  """x [B, S, D] + table[offset:offset + S] (a learned absolute position table [L, D])."""
  pos = jax.lax.dynamic_slice_in_dim(table, offset, x.shape[1], axis=0)  # [S, D]
  return nn.with_logical_constraint(x + pos.astype(x.dtype)[None], ACT_NAMES)


def causal_mask(q_len: int, k_len: int, offset=0) -> jax.Array:
  """[1, 1, q_len, k_len] bool: query i (absolute offset + i) may see keys 0..offset + i."""
  q_pos = offset + jnp.arange(q_len)[:, None]
  return (jnp.arange(k_len)[None, :] <= q_pos)[None, None]


# ----- KV cache -----------------------------------------------------------------------------
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


def cache_length(cache: KVCache) -> int:
  """Static length L of a KV cache."""
  return cache[0]["k"].shape[2]


# ----- attention and block ------------------------------------------------------------------
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
    self.query = dense(self.d_model, ("embed", "heads"), dtype=self.dtype)
    self.key = dense(self.d_model, ("embed", "heads"), dtype=self.dtype)
    self.value = dense(self.d_model, ("embed", "heads"), dtype=self.dtype)
    self.proj = dense(self.d_model, ("heads", "embed"), dtype=self.dtype)
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
    logits = jnp.einsum("bhsd,bhld->bhsl", q, k) * scale  # [B, H, S, L]
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
    self.ln1 = layer_norm(self.dtype)
    self.attn = Attention(self.d_model, self.n_heads, self.attn_dropout, self.resid_dropout,
                          self.dtype, self.attention_impl)
    if self.cross_attention:
      self.ln_cross = layer_norm(self.dtype)
      self.cross_attn = Attention(self.d_model, self.n_heads, self.attn_dropout,
                                  self.resid_dropout, self.dtype)
    self.ln2 = layer_norm(self.dtype)
    self.mlp_fc = dense(4 * self.d_model, ("embed", "mlp"), dtype=self.dtype)
    self.mlp_out = dense(self.d_model, ("mlp", "embed"), dtype=self.dtype)
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


# ----- stacks of blocks ---------------------------------------------------------------------
class LayerBlock(Block):
  """`Block` with the calling convention of a layer stack, all arguments positional.

  (x, layer, mask, train, index, context_mask) -> (x, new cache); layer = (cache, (k, v)) of
  this layer, either entry None. `train` is argument 4 (counting self) for `nn.remat`.
  """

  def __call__(self, x, layer, mask, train, index, context_mask):  # pylint: disable=arguments-differ
    cache, kv = layer
    context = None if kv is None else (kv[0], kv[1], context_mask)
    return super().__call__(x, mask, train=train, cache=cache, index=index, context=context)


_RematLayerBlock = nn.remat(LayerBlock, static_argnums=(4,))


def make_layers(n: int, *, remat: bool = False, **block_kwargs) -> Layers:
  """n `LayerBlock`s for a parent's setup(); assigned to `self.<stack>` their params are
  `<stack>_0 .. <stack>_{n-1}`. remat: recompute each block's activations in the backward pass."""
  cls = _RematLayerBlock if remat else LayerBlock
  return [cls(**block_kwargs) for _ in range(n)]


def layer_contexts(layers: Layers, context) -> list:
  """Per-layer cross-attention keys/values [(k, v)] of the context [B, Lc, Dc]."""
  return [blk.context_kv(context) for blk in layers]


def run_layers(layers: Layers, x, mask, *, train: bool, caches=None, index=None,
               context: Optional[Context] = None):
  """x [B, S, D] through the stack -> (x, new caches or Nones).

  Args:
    layers: from `make_layers`.
    x: [B, S, D] input.
    mask: attention mask broadcastable to [B, H, S, L]; None = causal over S.
    train: dropout on.
    caches: per-layer KV caches (decoding), with x at sequence offset `index`.
    context: (`layer_contexts` output, mask [B, Lc] bool) for cross-attention blocks.
  """
  kvs = context_mask = None
  if context is not None:
    kvs, cmask = context
    context_mask = cmask[:, None, None, :]
  new_caches = []
  for i, blk in enumerate(layers):
    layer = (None if caches is None else caches[i], None if kvs is None else kvs[i])
    x, cache = blk(x, layer, mask, train, index, context_mask)
    new_caches.append(cache)
  return x, new_caches
