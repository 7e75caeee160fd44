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
classifier-free guidance. The blocks, KV cache and layer loop come from `transformer.py`, shared
with the dense baseline and the byte text encoder, so all three run the same attention code.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskvq_jax.models.transformer import (ACT_NAMES, INIT, ZEROS, Context, KVCache, add_positions,
                                           cache_length, causal_mask, dense, init_kv_cache,
                                           layer_contexts, layer_norm, make_layers, run_layers)
# Re-exported: `maskvq_jax.stage2.sampling` imports it from here.
from maskvq_jax.models.transformer import grow_kv_cache  # noqa: F401  pylint: disable=unused-import

Dtype = Any


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

  Performance options (same function, see `transformer.py`): attention_impl; scan_layers (each
  transformer is one `nn.scan` over its blocks: params `code_blocks/...`, `position_blocks/...`
  stacked on a leading "layers" axis instead of `code_blocks_<i>` ..., converted with
  `transformer.relayout(variables, model.layer_stacks, scanned=True)`; KV caches stay per layer);
  remat_policy (none | full | dots_saveable | dots_with_no_batch_dims_saveable: what each block
  keeps for the backward pass). remat=True is the older spelling of remat_policy="full".
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
  attention_impl: str = "xla"  # or "dot_product" / "cudnn" (jax.nn.dot_product_attention) /
  # "pallas" (splash attention kernel, TPU) / "auto"; see transformer.ATTENTION_IMPLS
  remat: bool = False  # = remat_policy "full" (when remat_policy is "none")
  scan_layers: bool = False
  remat_policy: str = "none"

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

  @property
  def layer_stacks(self) -> dict:
    """{param prefix: number of layers} of the two transformers (for `transformer.relayout`)."""
    return {"code_blocks": self.code_layers, "position_blocks": self.position_layers}

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
    emb_init = nn.with_logical_partitioning(INIT, ("vocab", "embed"))
    self.value_emb = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype,
                              embedding_init=emb_init)
    self.value_pos_emb = nn.Embed(self.position_size, self.d_model, dtype=self.dtype,
                                  embedding_init=emb_init)
    if self.use_abs_pos:
      self.pos_emb = self.param("pos_emb", nn.with_logical_partitioning(ZEROS, ("length", "embed")),
                                (self.block_size, self.d_model), jnp.float32)
    if self.text_dim:
      self.null_text = self.param("null_text", nn.with_logical_partitioning(INIT, ("embed",)),
                                  (self.text_dim,), jnp.float32)
    block = dict(d_model=self.d_model, n_heads=self.n_heads, attn_dropout=self.attn_dropout,
                 resid_dropout=self.resid_dropout, cross_attention=bool(self.text_dim),
                 dtype=self.dtype, attention_impl=self.attention_impl, scan=self.scan_layers,
                 remat_policy="full" if self.remat and self.remat_policy == "none"
                 else self.remat_policy)
    self.code_blocks = make_layers(self.code_layers, **block)
    self.position_blocks = make_layers(self.position_layers, **block)
    self.code_head_ln = layer_norm(self.dtype)
    self.code_head = dense(self.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype,
                           f32_out=True)
    self.position_head_ln = layer_norm(self.dtype)
    self.position_head = dense(self.position_size, ("embed", "vocab"), use_bias=False,
                               dtype=self.dtype, f32_out=True)
    self.embed_drop = nn.Dropout(self.embd_dropout)

  # ----- shared pieces ------------------------------------------------------------------------
  def _code_input(self, codes, positions, offset):
    x = self.value_emb(codes) + self.value_pos_emb(positions)  # [B, S, D]
    if self.use_abs_pos:
      return add_positions(x, self.pos_emb, offset)
    return nn.with_logical_constraint(x, ACT_NAMES)

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
    code = layer_contexts(self.code_blocks, text)
    pos = layer_contexts(self.position_blocks, text)
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
    x = self.embed_drop(self._code_input(codes_in, pos_in, 0), deterministic=not train)
    h, _ = run_layers(self.code_blocks, x, mask, train=train, context=code_ctx)  # [B, T, D]
    w = nn.with_logical_constraint(h + self.value_emb(next_codes), ACT_NAMES)
    g, _ = run_layers(self.position_blocks, w, mask, train=train, context=pos_ctx)
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
    x = self._code_input(codes, positions, index)
    mask = causal_mask(s, cache_length(cache), index)
    h, new_cache = run_layers(self.code_blocks, x, mask, train=False, caches=cache, index=index,
                              context=context)
    return self._code_logits(h), h, new_cache

  def position_step(self, cache: KVCache, hidden, next_codes, index,
                    context: Optional[Context] = None):
    """Position-Transformer on hidden [B, S, D] + emb(next_codes [B, S]) at offset `index`.

    Returns (position_logits [B, S, P] predicting p_{t+1}, new cache).
    """
    s = next_codes.shape[1]
    w = nn.with_logical_constraint(hidden + self.value_emb(next_codes), ACT_NAMES)
    mask = causal_mask(s, cache_length(cache), index)
    g, new_cache = run_layers(self.position_blocks, w, mask, train=False, caches=cache,
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
