"""Golden parity of the Stackformer against the authors' PyTorch outputs (official_small.npz).

Covers every `out/gpt/*` (unconditional) and `out/gpt_class/*` (class-conditional) key:
teacher-forced logits and losses, the official top-k / top-p filters on the last-step logits, and
greedy decoding run through OUR KV-cached sampler (codes, positions and the raw per-step logits).
Index outputs must match exactly, floats to 1e-4 relative (max|ours - ref| / max|ref|).
"""
import json

import jax
import numpy as np

from maskvq_jax.stage2 import sampling
from maskvq_jax.parity.convert_stackformer import (stackformer_kwargs_from_official,
                                            stackformer_params_from_torch)
from maskvq_jax.parity.golden_rows import Row, compare
from maskvq_jax.stage2.losses import stackformer_loss
from maskvq_jax.models.stackformer import Stackformer, split_sequences

# Filter settings the golden file used (golden README, "filter_value_probs" / "..._position_").
VALUE_FILTER = dict(top_k=10, top_p=0.9)
POSITION_FILTER = dict(top_k=5, top_p=0.8)
_SECTIONS = {"gpt": ("transformer_config", "transformer."),
             "gpt_class": ("class_transformer_config", "class_transformer.")}


def load_golden_stackformer(z: dict, section: str):
  """(model, params) of the golden file's unconditional ("gpt") or class ("gpt_class") model."""
  if section not in _SECTIONS:
    raise ValueError(f"section must be one of {sorted(_SECTIONS)}, got {section!r}")
  cfg = json.loads(str(z["meta/config_json"]))
  config_key, prefix = _SECTIONS[section]
  kwargs = stackformer_kwargs_from_official(cfg[config_key]["params"])
  if section == "gpt_class":
    kwargs["n_classes"] = int(cfg["config"]["n_classes"])
  sd = {k[len("sd/"):]: v for k, v in z.items() if k.startswith("sd/")}
  return Stackformer(**kwargs), stackformer_params_from_torch(sd, prefix)


def check_stackformer(z: dict[str, np.ndarray], section: str) -> list[Row]:
  """One Row per `out/{section}/*` key (plus a failing row for any key left unchecked).

  Runs with float32 matmuls ("highest" precision): on GPU the default TF32 matmuls miss the
  1e-4 tolerance (about 6e-4 relative on an H200, indices still exact); on CPU it changes nothing.
  """
  with jax.default_matmul_precision("highest"):
    return _check(z, section)


def _check(z, section):
  model, params = load_golden_stackformer(z, section)
  out = f"out/{section}/"
  idx, pos_idx = z[f"in/{section}/idx"], z[f"in/{section}/pos_idx"]
  seq = split_sequences(idx, pos_idx)
  code_logits, pos_logits = model.apply(params, seq["codes_in"], seq["pos_in"], seq["next_codes"])
  _, losses = stackformer_loss(code_logits, pos_logits, seq["code_targets"],
                               seq["position_targets"])
  ours = {
      "value_logits": code_logits,
      "position_logits": pos_logits,
      "value_loss": losses["code_loss"],
      "position_loss": losses["position_loss"],
  }
  notes = {"value_loss": "plain mean CE", "position_loss": "plain mean CE"}
  if out + "filter_value_probs" in z:  # Unconditional file only.
    k = int(z["meta/K"])
    last = code_logits[:, -1]
    blocked = np.zeros(last.shape, bool)
    blocked[:, model.sos_token] = True
    ours["filter_value_probs"] = sampling.filtered_probs(last, blocked, **VALUE_FILTER)
    last_pos = pos_logits[:, -1]
    blocked = np.zeros(last_pos.shape, bool)
    np.put_along_axis(blocked, np.asarray(pos_idx[:, :k]), True, axis=1)
    ours["filter_position_probs"] = sampling.filtered_probs(last_pos, blocked, **POSITION_FILTER)
    notes["filter_value_probs"] = "sos blocked, top-k 10, top-p 0.9"
    notes["filter_position_probs"] = "pos_idx[:, :K] blocked, top-k 5, top-p 0.8"

  steps = z[out + "greedy_codes"].shape[1]
  batch = idx.shape[0]
  labels = z[f"in/{section}/labels"] if model.n_classes else None
  greedy = sampling.sample(model, params, jax.random.key(0),
                           sampling.SamplerConfig(steps=steps, greedy=True), labels=labels,
                           batch_size=batch, return_logits=True)
  n_logit_steps = z[out + "greedy_value_logits"].shape[1]
  ours["greedy_codes"] = greedy.codes
  ours["greedy_positions"] = greedy.positions
  ours["greedy_value_logits"] = greedy.code_logits[:, :n_logit_steps]
  ours["greedy_position_logits"] = greedy.position_logits[:, :n_logit_steps]
  for name in ("greedy_codes", "greedy_positions", "greedy_value_logits",
               "greedy_position_logits"):
    notes[name] = "KV-cached sampler, greedy"

  rows = []
  for key in sorted(k for k in z if k.startswith(out)):
    name = key[len(out):]
    if name not in ours:
      rows.append(Row(key, float("inf"), float("inf"), False, "not checked"))
      continue
    ref = z[key]
    exact = np.issubdtype(ref.dtype, np.integer)
    rows.append(compare(key, np.asarray(ours[name]), ref, exact=exact, note=notes.get(name, "")))
  return rows
