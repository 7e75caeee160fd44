"""Transformer pieces shared by the stage-2 models (Stackformer, dense GPT, byte text encoder).

One copy of the minGPT block the authors use (pre-LN, separate q/k/v Linear with bias, exact
GELU, LayerNorm eps 1e-5, N(0, 0.02) init), its KV cache, and the code that runs a stack of
blocks, so the three models run the same attention code and keep the official parameter names
(`<stack>_<i>/{ln1, attn/{query, key, value, proj}, ln2, mlp_fc, mlp_out}`).

A stack runs unrolled (one Python loop step per block, params `<stack>_0 .. <stack>_{n-1}`) or
scanned (`nn.scan` over one block, params `<stack>/...` stacked on a leading "layers" axis): the
same function, compiled once per stack instead of once per block. KV-cached decoding uses one
cache per layer in both layouts (see `run_layers`). `stack_layers` / `unstack_layers` /
`relayout` convert weights between the two layouts (official checkpoints convert to the unrolled
one). Blocks can recompute their activations in the backward pass (`remat_policy`).
"""
import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence, Union

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskvq_jax.models import pallas_attention

Dtype = Any
KVCache = list  # One {"k": [B, H, L, Dh], "v": [B, H, L, Dh]} dict per layer.
# Cross-attention inputs: (per-layer [(k, v)] or, scanned, (k, v) stacked [n, B, H, Lc, Dh],
# mask [B, Lc] bool).
Context = tuple
Layers = Union[Sequence[nn.Module], nn.Module]  # What `make_layers` returns.

INIT = nn.initializers.normal(stddev=0.02)
ZEROS = nn.initializers.zeros_init()
ONES = nn.initializers.ones_init()
LN_EPS = 1e-5  # torch.nn.LayerNorm default.

ACT_NAMES = ("batch", "length", "embed")
# "xla": einsum + float32 softmax (exact official numerics); "dot_product":
# jax.nn.dot_product_attention's XLA implementation; "cudnn": its cuDNN fused kernel, falling back
# to "dot_product" (one logged note per reason) where cuDNN cannot run it: no GPU / cuDNN, float32
# inputs (cuDNN needs bf16 / fp16), unsupported head size or mask; "pallas": the Pallas splash
# (flash) attention kernel on TPU for the causal teacher-forced forward (`pallas_attention`),
# falling back to "xla" (one logged note per reason) off TPU or where the mesh shards the length;
# "auto": "cudnn" on GPU, "pallas" on TPU, "xla" elsewhere. Every fused path computes the same
# function; with attention-weight dropout active (training with attn_dropout > 0) and for masked
# attention (KV-cached decoding, the text encoder, cross-attention) "pallas" uses "xla".
ATTENTION_IMPLS = ("xla", "dot_product", "cudnn", "pallas", "auto")
AUTO_ATTENTION = {"gpu": "cudnn", "tpu": "pallas"}  # "auto" per backend; others: "xla"
# Cache layout [B, H, L, Dh] (heads before length): the per-step q.k^T and weights.v contractions
# then read the cache in place; [B, L, H, Dh] made XLA transpose every layer's cache every step
# (4x slower decode on CPU at L = 256).
CACHE_NAMES = ("batch", "heads", "length", "head_dim")
# Logical name of the leading axis of scanned params. No sharding preset maps it, so it stays
# unsharded (each device holds all layers of its shard).
LAYERS = "layers"
# remat_policy -> jax.checkpoint policy (None = save nothing, recompute the whole block).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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


def dense(features, names, *, use_bias=True, dtype=jnp.float32, name=None, f32_out=False):
  """torch-initialised Linear with logical axis names `names` (kernel) / names[-1:] (bias)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(INIT, names),
      bias_init=nn.with_logical_partitioning(ZEROS, names[-1:]),
      promote_dtype=_promote_keep_kernel, dot_general=_f32_out_dot if f32_out else _mixed_dot)


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
_FALLBACK_NOTES = set()  # reasons already logged (one note each, not one per layer or trace)


def resolve_attention_impl(impl: str, backend: Optional[str] = None) -> str:
  """The implementation `impl` stands for on `backend` (default: jax's): "auto" -> AUTO_ATTENTION
  or "xla"; other values as they are. A ValueError names an unknown value."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r}; choose one of {ATTENTION_IMPLS}")
  if impl != "auto":
    return impl
  return AUTO_ATTENTION.get(backend or jax.default_backend(), "xla")


def benchmarked_attention_impls(backend: str) -> tuple:
  """The distinct implementations worth timing on `backend`: not "auto" (an alias), and "pallas"
  only on TPU (elsewhere it is "xla")."""
  return tuple(i for i in ATTENTION_IMPLS if i != "auto" and (i != "pallas" or backend == "tpu"))


def _note_fallback(impl: str, reason: str):
  """Logs `reason` once per (impl, reason), not once per layer or trace."""
  if (impl, reason) not in _FALLBACK_NOTES:
    _FALLBACK_NOTES.add((impl, reason))
    logging.warning("attention_impl=%r unavailable here (%s); using XLA attention", impl, reason)


def fused_attention(q, k, v, *, scale: float, mask, impl: str):
  """jax.nn.dot_product_attention of q [B, S, H, Dh], k / v [B, L, H, Dh]; mask None = causal.

  impl "cudnn" asks for the cuDNN kernel and falls back to the XLA one where cuDNN refuses at trace
  time (no cuDNN on this backend, dtype, shapes); "dot_product" is the XLA one.
  """
  kw = dict(scale=scale, mask=mask, is_causal=mask is None)
  if impl == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kw)
    except (RuntimeError, ValueError, NotImplementedError) as e:
      _note_fallback("cudnn", f"{type(e).__name__}: {e}")
  return jax.nn.dot_product_attention(q, k, v, **kw)


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
  # One of ATTENTION_IMPLS. The fused paths ("dot_product", "cudnn", "pallas") have no
  # attention-weight dropout, so they are used only when that dropout is inactive.
  impl: str = "xla"

  def setup(self):
    resolve_attention_impl(self.impl)  # a bad value fails here, before anything is traced
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
    impl = resolve_attention_impl(self.impl)
    if impl != "xla" and train and self.attn_dropout > 0:
      impl = "xla"  # the fused kernels have no attention-weight dropout
    if impl == "pallas" and mask is None:
      reason = pallas_attention.unavailable(q.shape, CACHE_NAMES)
      if reason is None:
        y = pallas_attention.causal_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                              scale=scale, names=CACHE_NAMES)
        y = jnp.swapaxes(y, 1, 2).reshape(y.shape[0], y.shape[2], self.d_model)
        return self.resid_drop(self.proj(y), deterministic=not train)
      _note_fallback("pallas", reason)
    if impl in ("dot_product", "cudnn"):
      t = lambda a: jnp.swapaxes(a, 1, 2)  # [B, H, S, Dh] -> [B, S, H, Dh]
      y = fused_attention(t(q), t(k).astype(q.dtype), t(v).astype(q.dtype), scale=scale,
                          mask=mask, impl=impl)
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
  this layer, either entry None. `train` is argument 4 (counting self) for `nn.remat`; in a scan
  `layer` is the scanned input, the rest are broadcast.
  """

  def __call__(self, x, layer, mask, train, index, context_mask):  # pylint: disable=arguments-differ
    cache, kv = layer
    context = None if kv is None else (kv[0], kv[1], context_mask)
    return super().__call__(x, mask, train=train, cache=cache, index=index, context=context)

  def layer_context(self, carry, context):
    """Scan form of `context_kv`: (carry, context [B, Lc, Dc]) -> (carry, (k, v))."""
    return carry, self.context_kv(context)


def check_remat_policy(name: str) -> str:
  """`name` if it is one of REMAT_POLICIES, else a ValueError listing them."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={name!r}; choose one of {tuple(REMAT_POLICIES)}")
  return name


@functools.lru_cache(maxsize=None)
def _layer_class(n: int, scan: bool, remat_policy: str):
  """LayerBlock, optionally remat'ed, optionally scanned n times (classes built once)."""
  cls = LayerBlock
  if remat_policy != "none":
    # A scan body is not CSE'd across iterations anyway; prevent_cse would only slow it down.
    cls = nn.remat(cls, static_argnums=(4,), policy=REMAT_POLICIES[remat_policy],
                   prevent_cse=not scan)
  if not scan:
    return cls
  common = dict(variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                length=n, metadata_params={nn.PARTITION_NAME: LAYERS})
  bcast = nn.broadcast
  return nn.scan(cls, methods={"__call__": dict(common, in_axes=(0, bcast, bcast, bcast, bcast)),
                               "layer_context": dict(common, in_axes=(bcast,))})


def make_layers(n: int, *, scan: bool = False, remat_policy: str = "none",
                **block_kwargs) -> Layers:
  """n blocks (`Block` fields as keywords) for a parent's setup(), assigned to `self.<stack>`.

  Unrolled: a list of n `LayerBlock`s, params `<stack>_0 .. <stack>_{n-1}`. scan: one scanned
  `LayerBlock`, params `<stack>/...` with a leading layer axis of size n (logical name "layers").
  remat_policy: one of REMAT_POLICIES; what each block keeps for the backward pass ("none": all,
  "full": nothing, its inputs only; the dots_* policies: the matmul outputs).
  """
  cls = _layer_class(n, scan, check_remat_policy(remat_policy))
  if scan:
    return cls(**block_kwargs)
  return [cls(**block_kwargs) for _ in range(n)]


def _scanned(layers: Layers) -> bool:
  return not isinstance(layers, (list, tuple))


def layer_contexts(layers: Layers, context):
  """Cross-attention keys/values of the context [B, Lc, Dc] for every layer: a list [(k, v)]
  (unrolled) or one (k, v) stacked [n, B, H, Lc, Dh] (scanned)."""
  if _scanned(layers):
    return layers.layer_context(None, context)[1]
  return [blk.context_kv(context) for blk in layers]


def run_layers(layers: Layers, x, mask, *, train: bool, caches=None, index=None,
               context: Optional[Context] = None):
  """x [B, S, D] through the stack -> (x, new caches).

  Args:
    layers: from `make_layers`.
    x: [B, S, D] input.
    mask: attention mask broadcastable to [B, H, S, L]; None = causal over S.
    train: dropout on.
    caches: per-layer KV caches (`init_kv_cache`), for decoding (eval mode) with x at
      sequence offset `index`.
    context: (`layer_contexts` output, mask [B, Lc] bool) for cross-attention blocks.

  Returns:
    (x [B, S, D], new caches; Nones / None without caches).

  A scanned stack decodes (with `caches`) block by block on its slices of the stacked params,
  with the per-layer caches updated in place; a scan over stacked caches would copy each layer's
  cache into and out of the scan at every step and hold two copies of all caches. XLA still
  copies the weight slices inside the decode loop, so sampling a scanned model is ~1.6x slower
  than the unrolled one on CPU: for full speed, decode with the unrolled model on
  `relayout(..., scanned=False)` weights (the same function; the samplers do, see
  `stage2.sampling.unrolled`).
  """
  kvs = context_mask = None
  if context is not None:
    kvs, cmask = context
    context_mask = cmask[:, None, None, :]
  if _scanned(layers) and caches is None:
    return layers(x, (None, kvs), mask, train, index, context_mask)
  if _scanned(layers):
    if train:
      raise ValueError("KV-cached layers run in eval mode only (train=False)")
    block = LayerBlock(**{f.name: getattr(layers, f.name) for f in dataclasses.fields(LayerBlock)
                          if f.init and f.name not in ("parent", "name")}, parent=None)
    stacked = nn.meta.unbox(layers.variables["params"])
    at = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    layers = [functools.partial(block.apply, {"params": at(stacked, i)})
              for i in range(len(caches))]
    kvs = None if kvs is None else [at(kvs, i) for i in range(len(caches))]
  new_caches = []
  for i, blk in enumerate(layers):
    layer = (None if caches is None else caches[i], None if kvs is None else kvs[i])
    x, cache = blk(x, layer, mask, train, index, context_mask)
    new_caches.append(cache)
  return x, new_caches


# ----- weight layout conversion -------------------------------------------------------------
def _stack(*xs):
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def stack_layers(params: Mapping, n: int, prefix: str = "blocks") -> dict:
  """Unrolled -> scanned layout: `{prefix}_0 .. {prefix}_{n-1}` become one `{prefix}` subtree
  whose leaves are stacked on a new leading axis. Other entries are kept; params are unboxed.

  Args:
    params: the dict holding the per-layer subtrees (e.g. variables["params"]).
    n: number of layers; all of them must be present, and no `{prefix}_{i}` with i >= n.
    prefix: the stack's attribute name ("blocks", "code_blocks", "position_blocks").
  """
  params = dict(nn.meta.unbox(params))
  names = [f"{prefix}_{i}" for i in range(n)]
  missing = [k for k in names if k not in params]
  extra = sorted(k for k in params if k.startswith(prefix + "_") and k not in names
                 and k[len(prefix) + 1:].isdigit())
  if n < 1 or missing or extra or prefix in params:
    raise ValueError(f"cannot stack {n} layers {prefix!r}: missing {missing}, extra {extra}"
                     + (f", {prefix!r} already present" if prefix in params else ""))
  layers = [params.pop(k) for k in names]
  params[prefix] = jax.tree.map(_stack, *layers)
  return params


def unstack_layers(params: Mapping, prefix: str = "blocks") -> dict:
  """Scanned -> unrolled layout (inverse of `stack_layers`); n is the leading axis size."""
  params = dict(nn.meta.unbox(params))
  if prefix not in params:
    raise ValueError(f"no stacked layers {prefix!r} to unstack (keys {sorted(params)})")
  stacked = params.pop(prefix)
  sizes = {x.shape[0] if np.ndim(x) else None for x in jax.tree.leaves(stacked)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"stacked layers {prefix!r} have no common leading axis: sizes {sizes}")
  n = sizes.pop()
  for i in range(n):
    params[f"{prefix}_{i}"] = jax.tree.map(lambda x: x[i], stacked)  # pylint: disable=cell-var-from-loop
  return params


def relayout(variables: Mapping, stacks: Mapping[str, int], *, scanned: bool) -> dict:
  """Converts variables ({"params": ...} or params) to the unrolled or the scanned layout.

  stacks: {prefix: n_layers} of the model (its `layer_stacks`). A stack already in the wanted
  layout is left as is, so `relayout(v, model.layer_stacks, scanned=model.scan_layers)` fits any
  checkpoint of the same architecture to `model`.
  """
  if "params" in variables:
    return {**variables, "params": relayout(variables["params"], stacks, scanned=scanned)}
  params = dict(variables)
  for prefix, n in stacks.items():
    if scanned and prefix not in params:
      params = stack_layers(params, n, prefix)
    elif not scanned and prefix in params:
      params = unstack_layers(params, prefix)
      if f"{prefix}_{n - 1}" not in params or f"{prefix}_{n}" in params:
        raise ValueError(f"stacked layers {prefix!r} do not hold {n} layers")
  return params


def relayout_tree(tree: Any, stacks: Mapping[str, int], *, scanned: bool) -> Any:
  """`relayout` of every model-params dict inside `tree` (a train state: params, their EMA, the
  optimizer's moments); a params dict is one holding a stack (`prefix` or `prefix_0` of
  `stacks`). Everything else is kept. Converts a checkpoint's whole train state across layouts.
  """
  def is_params(x):
    return isinstance(x, Mapping) and any(p in x or f"{p}_0" in x for p in stacks)
  return jax.tree.map(lambda x: relayout(x, stacks, scanned=scanned) if is_params(x) else x,
                      tree, is_leaf=is_params)
