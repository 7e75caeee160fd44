"""One row of a golden-parity report, shared by every golden checker."""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
  key: str
  max_abs: float
  max_rel: float
  passed: bool
  note: str = ""


def compare(key: str, ours, ref, *, rtol: float = 1e-4, exact: bool = False, note: str = "") -> Row:
  """Compares one output; `max_rel` is max|ours - ref| / max|ref| (indices: exact equality)."""
  ours = np.asarray(ours)
  ref = np.asarray(ref)
  if ours.shape != ref.shape:
    return Row(key, float("inf"), float("inf"), False, f"shape {ours.shape} != {ref.shape}")
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
  max_abs = float(diff.max()) if diff.size else 0.0
  scale = float(np.abs(ref).max()) if ref.size else 0.0
  max_rel = max_abs / scale if scale > 0 else max_abs
  passed = max_abs == 0.0 if exact else max_rel <= rtol
  return Row(key, max_abs, max_rel, passed, note)
