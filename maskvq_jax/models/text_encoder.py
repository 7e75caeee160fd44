"""Text encoders for the text-conditional Stackformer (cross-attention context).

The authors did not release their text-to-image Stackformer (reference.md section 2.3). We provide:

  * `ByteTextEncoder`: a small trainable transformer over UTF-8 bytes. It needs no tokenizer file
    and no download, so text conditioning works fully offline and trains jointly with the prior.
  * `FlaxCLIPTextEncoder`: an optional frozen adapter around a Flax CLIP text model from
    `transformers`, loaded from a local directory. `transformers` is imported lazily, only when the
    adapter is constructed, so it is not a dependency of this package. (transformers v5 removed its
    Flax models; use a 4.x release with Flax support.)

Both return features [B, Lt, D] and a padding mask [B, Lt] (True = real token), which is what
`Stackformer(text_dim=D)` consumes.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskvq_jax.models.transformer import INIT, add_positions, layer_norm, make_layers, run_layers

Dtype = Any

PAD_ID = 0  # Byte b is token b + 1; every text starts with BOS, so no row is all padding.
BOS_ID = 257
BYTE_VOCAB = 258


def tokenize_bytes(texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Host-side: texts -> (ids int32 [B, max_len], mask bool [B, max_len]); truncates UTF-8 bytes."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  ids = np.full((len(texts), max_len), PAD_ID, np.int32)
  for i, text in enumerate(texts):
    data = [BOS_ID] + [b + 1 for b in text.encode("utf-8")]
    data = data[:max_len]
    ids[i, :len(data)] = data
  return ids, ids != PAD_ID


class ByteTextEncoder(nn.Module):
  """Bidirectional pre-LN transformer over byte tokens -> ([B, L, D], mask [B, L])."""
  max_len: int = 64
  d_model: int = 256
  n_heads: int = 4
  n_layers: int = 2
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  def setup(self):
    self.tok_emb = nn.Embed(BYTE_VOCAB, self.d_model, dtype=self.dtype,
                            embedding_init=nn.with_logical_partitioning(INIT, ("vocab", "embed")))
    self.pos_emb = self.param("pos_emb", nn.with_logical_partitioning(INIT, ("length", "embed")),
                              (self.max_len, self.d_model), jnp.float32)
    self.blocks = make_layers(self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                              attn_dropout=self.dropout, resid_dropout=self.dropout,
                              dtype=self.dtype)
    self.ln_f = layer_norm(self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, ids, mask, *, train: bool = False):
    """ids [B, L] (L <= max_len), mask [B, L] bool -> (features [B, L, D], mask)."""
    length = ids.shape[1]
    if length > self.max_len:
      raise ValueError(f"text length {length} exceeds max_len={self.max_len}")
    mask = mask.astype(bool)
    x = self.drop(add_positions(self.tok_emb(ids), self.pos_emb), deterministic=not train)
    key_mask = mask[:, None, None, :]  # [B, 1, 1, L]: every query sees all real tokens.
    x, _ = run_layers(self.blocks, x, key_mask, train=train)
    return self.ln_f(x), mask


class FlaxCLIPTextEncoder:
  """Frozen pretrained CLIP text tower (transformers' FlaxCLIPTextModel) from a local path."""

  def __init__(self, path: str, max_length: int = 77, dtype: Dtype = jnp.float32):
    try:
      import transformers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("FlaxCLIPTextEncoder needs the optional package `transformers` (a 4.x "
                        "release with Flax models); install it or use ByteTextEncoder") from e
    self.max_length = max_length
    self.tokenizer = transformers.CLIPTokenizer.from_pretrained(path, local_files_only=True)
    self.model = transformers.FlaxCLIPTextModel.from_pretrained(path, local_files_only=True,
                                                                dtype=dtype)
    self.params = self.model.params

  @property
  def dim(self) -> int:
    return int(self.model.config.hidden_size)

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    tok = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                         truncation=True, return_tensors="np")
    return tok["input_ids"].astype(np.int32), tok["attention_mask"].astype(bool)

  def encode(self, ids, mask):
    """ids, mask [B, L] -> (last hidden states [B, L, D] with stopped gradients, mask)."""
    out = self.model(input_ids=ids, attention_mask=mask.astype(jnp.int32), params=self.params,
                     train=False)
    return jax.lax.stop_gradient(out.last_hidden_state), jnp.asarray(mask, bool)

  def __call__(self, texts: Sequence[str]):
    return self.encode(*self.tokenize(texts))
