"""Inception Score from pool3 features and a user-supplied logits head.

Why a separate head: the FID InceptionV3 we ship (`maskvq_jax/models/inception.py`) ends at pool3
and has no classifier, and IS is only meaningful with the exact 1008-way classifier of the TF
Inception graph (Salimans et al., 2016). Rather than invent one, IS needs a `.npz` with that
layer's weights (`--inception_logits_npz`): a kernel [2048, C] (C = 1008 for the TF graph) and
optionally a bias [C]. Accepted key pairs: (`kernel`, `bias`), (`w`, `b`), or the TF graph's
(`softmax/weights`, `softmax/biases`). Without it, asking for IS raises
`InceptionScoreUnavailable`: a made-up number is worse than none.

Bias: the original IS code (openai/improved-gan `inception_score/model.py`) computes
`softmax(pool3 @ W)` without the bias, and torchmetrics/torch-fidelity reproduce that as
"logits_unbiased"; published IS numbers use it. So the bias is ignored by default and used only
with `use_bias=True`.

IS = exp(E_x KL(p(y|x) || p(y))), computed per split (default 10, in order) in float64; the
result is the mean and standard deviation over splits, as in the original code.
"""
import os
from typing import NamedTuple, Optional

import numpy as np

from maskvq_jax.core import files

_KEY_PAIRS = (("kernel", "bias"), ("w", "b"), ("softmax/weights", "softmax/biases"))


class InceptionScoreUnavailable(ValueError):
  """IS was requested but no logits head was supplied."""


class LogitsHead(NamedTuple):
  kernel: np.ndarray  # [D, C] float64
  bias: Optional[np.ndarray]  # [C] float64 or None


def require_head(path: Optional[str]) -> str:
  """Returns `path`, or raises the clear "IS needs a logits head" error when it is missing."""
  if not path:
    raise InceptionScoreUnavailable(
        "IS needs the Inception classifier (1008-way logits layer), which the FID InceptionV3 "
        "shipped here does not have: pass --inception_logits_npz with a kernel [2048, 1008] "
        "(keys kernel/bias, w/b or softmax/weights/softmax/biases), or drop 'is' from --metrics")
  return path


def load_head(path: str | os.PathLike, feature_dim: int = 2048) -> LogitsHead:
  """Loads and checks a logits head .npz (see module docstring for the accepted keys)."""
  path = os.fspath(require_head(os.fspath(path) if path else None))
  if not files.isfile(path):
    raise FileNotFoundError(f"--inception_logits_npz file not found: {path}")
  with files.open(path, "rb") as f, np.load(f) as z:
    keys = set(z.files)
    for kname, bname in _KEY_PAIRS:
      if kname in keys:
        kernel = np.asarray(z[kname], np.float64)
        bias = np.asarray(z[bname], np.float64) if bname in keys else None
        break
    else:
      raise ValueError(f"{path}: no logits kernel found; expected one of "
                       f"{[k for k, _ in _KEY_PAIRS]}, found keys {sorted(keys)}")
  if kernel.ndim != 2 or kernel.shape[0] != feature_dim:
    raise ValueError(f"{path}: logits kernel has shape {kernel.shape}, expected "
                     f"[{feature_dim}, num_classes] (pool3 features x classes)")
  if bias is not None and bias.shape != (kernel.shape[1],):
    raise ValueError(f"{path}: logits bias has shape {bias.shape}, expected ({kernel.shape[1]},)")
  return LogitsHead(kernel, bias)


def logits_from_pool3(pool3, head: LogitsHead, use_bias: bool = False) -> np.ndarray:
  """pool3 [N, D] -> logits [N, C] in float64 (bias only when `use_bias`)."""
  f = np.asarray(pool3, np.float64)
  if f.ndim != 2 or f.shape[1] != head.kernel.shape[0]:
    raise ValueError(f"pool3 features {f.shape} do not match the head kernel {head.kernel.shape}")
  logits = f @ head.kernel
  if use_bias:
    if head.bias is None:
      raise ValueError("use_bias=True but the logits head has no bias")
    logits = logits + head.bias
  return logits


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` consecutive splits of exp(E KL(p(y|x) || p(y))); float64."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2:
    raise ValueError(f"logits must be [N, C], got shape {logits.shape}")
  n = logits.shape[0]
  if not isinstance(splits, int) or splits < 1 or splits > n:
    raise ValueError(f"splits={splits!r} must be an int in [1, N={n}]")
  log_p = _log_softmax(logits)
  scores = []
  for part in np.array_split(np.arange(n), splits):
    lp = log_p[part]
    p = np.exp(lp)
    log_marginal = np.log(np.mean(p, axis=0))
    # p = 0 terms contribute 0 (avoids 0 * inf when a class underflows in the whole split).
    kl = np.sum(np.where(p > 0, p * (lp - log_marginal[None]), 0.0), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def inception_score_from_pool3(pool3, head: LogitsHead, *, splits: int = 10,
                               use_bias: bool = False) -> tuple[float, float]:
  return inception_score(logits_from_pool3(pool3, head, use_bias), splits)
