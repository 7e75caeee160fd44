"""Codebook usage over a whole split: the USED fraction, the unused fraction, and perplexity.

Why this exists: per-batch usage (what the trainer logs) underestimates how much of the codebook
a tokenizer uses, and the authors' codebook script prints the *unused* fraction under the label
"usage". Here counts are accumulated exactly (int64 histogram on the host) over every kept token
of every example, and each number says what it is:

  used_fraction   = #codes that occur at least once / codebook_size
  unused_fraction = 1 - used_fraction
  perplexity      = exp(H(p)), H in nats, p = code frequencies over the split
                    (1 = one code; codebook_size = perfectly uniform use).
"""
import numpy as np


class CodebookUsage:
  """Accumulates code counts batch by batch; `result()` gives the metrics."""

  def __init__(self, codebook_size: int):
    if not isinstance(codebook_size, (int, np.integer)) or codebook_size < 1:
      raise ValueError(f"codebook_size={codebook_size!r} must be a positive int")
    self.codebook_size = int(codebook_size)
    self.counts = np.zeros((self.codebook_size,), np.int64)

  def update(self, codes) -> None:
    """Adds codes of any shape (e.g. [B, K]); values must lie in [0, codebook_size)."""
    c = np.asarray(codes).reshape(-1)
    if c.size == 0:
      return
    if not np.issubdtype(c.dtype, np.integer):
      raise ValueError(f"codes must be integers, got dtype {c.dtype}")
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= self.codebook_size:
      raise ValueError(f"codes span [{lo}, {hi}], outside [0, {self.codebook_size}) "
                       "(wrong codebook_size, or positions passed as codes?)")
    self.counts += np.bincount(c, minlength=self.codebook_size)

  def result(self) -> dict:
    total = int(self.counts.sum())
    used = int(np.count_nonzero(self.counts))
    if total:
      p = self.counts[self.counts > 0].astype(np.float64) / total
      perplexity = float(np.exp(-np.sum(p * np.log(p))))
    else:
      perplexity = float("nan")
    return {"used_fraction": used / self.codebook_size,
            "unused_fraction": 1.0 - used / self.codebook_size,
            "num_used": used, "codebook_size": self.codebook_size, "num_tokens": total,
            "perplexity": perplexity}


def codebook_usage(codes, codebook_size: int) -> dict:
  """One-shot version of `CodebookUsage` for codes of any shape."""
  acc = CodebookUsage(codebook_size)
  acc.update(codes)
  return acc.result()
