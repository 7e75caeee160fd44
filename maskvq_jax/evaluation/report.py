"""The evaluation report: one JSON file per run and a plain-text table for the terminal.

Why JSON with flat metric names: the ablation report (`maskvq_jax/tools/ablation_report.py`)
and plotting scripts read many of these side by side; a flat {"rfid": ..., "codebook/
used_fraction": ...} dict with the tokenizer's keep ratio and tokens per image next to it needs
no schema knowledge beyond this module's docstring.

Metric names: fid, is, is_std, precision, recall (samples vs reference); rfid, psnr, ssim, lpips
(reconstructions); codebook/{used_fraction, unused_fraction, num_used, perplexity, num_tokens};
mask/{kept_on_object, chance, lift, *_tokens, kept_fraction}; sampling/{tokens_per_s, images_per_s}.
"""
import datetime
import json
import math
from typing import Any

from maskvq_jax.core import files

REPORT_VERSION = 1
DIRECTION = {"fid": "lower", "rfid": "lower", "lpips": "lower", "is": "higher",
             "precision": "higher", "recall": "higher", "psnr": "higher", "ssim": "higher",
             "codebook/used_fraction": "higher", "codebook/perplexity": "higher",
             "mask/lift": "higher", "mask/lift_tokens": "higher", "sampling/tokens_per_s": "higher"}


def new_report(target: dict) -> dict:
  return {"version": REPORT_VERSION,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "target": target, "tokenizer": None, "dataset": None, "num_examples": {},
          "metrics": {}, "timings": {}, "files": {}, "settings": {}, "notes": []}


def _jsonable(x: Any):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None  # JSON has no NaN/Inf
  return x


def write(path: str, report: dict) -> str:
  """Writes `report` as JSON (atomically; local or gs://). Returns the absolute path."""
  return files.write_text(path, json.dumps(_jsonable(report), indent=2) + "\n")


def read(path: str) -> dict:
  rep = json.loads(files.read_text(path))
  if not isinstance(rep, dict) or "metrics" not in rep:
    raise ValueError(f"{path} is not an evaluation report (no 'metrics')")
  return rep


def _fmt(v) -> str:
  if v is None:
    return "n/a"
  if isinstance(v, bool) or isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if not math.isfinite(v):
      return "n/a"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
  return str(v)


def table(report: dict) -> str:
  """A two/three-column text table of the metrics (with better-is direction)."""
  rows = [("metric", "value", "better")]
  for k, v in report["metrics"].items():
    rows.append((k, _fmt(v), DIRECTION.get(k, "")))
  w = [max(len(r[i]) for r in rows) for i in range(3)]
  line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()
  out = [line(rows[0]), "  ".join("-" * x for x in w)] + [line(r) for r in rows[1:]]
  tok = report.get("tokenizer")
  if tok:
    out.insert(0, f"tokenizer: keep_ratio={_fmt(tok.get('keep_ratio'))} tokens/image="
                  f"{tok.get('tokens_per_image')} grid={tok.get('grid')} codebook="
                  f"{tok.get('codebook_size')}")
  n = report.get("num_examples") or {}
  if n:
    out.insert(0, "examples: " + ", ".join(f"{k}={v}" for k, v in n.items()))
  return "\n".join(out)
