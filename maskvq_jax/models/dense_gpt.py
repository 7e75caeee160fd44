"""Dense raster-order GPT over all N codes of a dense tokenizer: the baseline the Stackformer beats.

Same blocks, init and sampler machinery as the Stackformer (both built from `transformer.py`), so a
speed or quality comparison measures the masked-sequence idea and nothing else. Layout:
idx = [sos = C, c_0 .. c_{N-1}] with codes in raster order; step t predicts c_t.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from maskvq_jax.models.transformer import (INIT, ZEROS, KVCache, add_positions, cache_length,
                                           causal_mask, dense, init_kv_cache, layer_norm,
                                           make_layers, run_layers)

Dtype = Any


class DenseGPT(nn.Module):
  """minGPT over dense code sequences (token + learned absolute position embedding).

  scan_layers / remat_policy / attention_impl: as in `Stackformer` (params `blocks/...` stacked on
  a leading "layers" axis instead of `blocks_<i>`; `layer_stacks` for `transformer.relayout`).
  """
  vocab_size: int  # codebook_size + 1 (sos = codebook_size).
  block_size: int  # N, the number of grid tokens.
  d_model: int = 256
  n_heads: int = 8
  n_layers: int = 8
  embd_dropout: float = 0.0
  resid_dropout: float = 0.0
  attn_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"

  @property
  def codebook_size(self) -> int:
    return self.vocab_size - 1

  @property
  def sos_token(self) -> int:
    return self.vocab_size - 1

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def layer_stacks(self) -> dict:
    return {"blocks": self.n_layers}

  def setup(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
    self.tok_emb = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype,
                            embedding_init=nn.with_logical_partitioning(INIT, ("vocab", "embed")))
    self.pos_emb = self.param("pos_emb", nn.with_logical_partitioning(ZEROS, ("length", "embed")),
                              (self.block_size, self.d_model), jnp.float32)
    self.blocks = make_layers(self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                              attn_dropout=self.attn_dropout, resid_dropout=self.resid_dropout,
                              dtype=self.dtype, attention_impl=self.attention_impl,
                              scan=self.scan_layers, remat_policy=self.remat_policy)
    self.head_ln = layer_norm(self.dtype)
    self.head = dense(self.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype,
                      f32_out=True)
    self.embed_drop = nn.Dropout(self.embd_dropout)

  def _forward(self, codes, offset, mask, *, train, cache=None):
    x = self.embed_drop(add_positions(self.tok_emb(codes), self.pos_emb, offset),
                        deterministic=not train)
    x, new_cache = run_layers(self.blocks, x, mask, train=train, caches=cache, index=offset)
    return self.head(self.head_ln(x)).astype(jnp.float32), new_cache

  def __call__(self, codes_in, *, train: bool = False):
    """codes_in [B, T] = idx[:, :-1] -> logits [B, T, V] predicting idx[:, 1:]."""
    t = codes_in.shape[1]
    if t > self.block_size:
      raise ValueError(f"sequence length {t} exceeds block_size={self.block_size}")
    logits, _ = self._forward(codes_in, 0, None, train=train)  # None: causal (fused kernels' form)
    return logits

  def init_cache(self, batch: int, length: int, dtype: Dtype = jnp.float32) -> KVCache:
    """Empty KV cache for `length` steps (no params needed; call on the unbound module)."""
    return init_kv_cache(self.n_layers, batch, length, self.n_heads, self.head_dim, dtype)

  def step(self, cache: KVCache, codes, index):
    """codes [B, S] at sequence offset `index` -> (logits [B, S, V], new cache)."""
    mask = causal_mask(codes.shape[1], cache_length(cache), index)
    return self._forward(codes, index, mask, train=False, cache=cache)
