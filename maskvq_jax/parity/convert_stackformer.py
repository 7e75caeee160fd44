"""Loads the authors' stage-2 weights (`ReverseStackedPositionGPT` state dicts) into `Stackformer`.

The mapping is one-to-one: Linear weights [out, in] are transposed to Flax kernels [in, out],
`pos_emb` [1, block, d] loses its leading axis, the causal-mask buffers `attn.mask` are dropped.
Any key we do not recognise, or any parameter left unfilled, is an error: a checkpoint that only
partly loads would silently sample garbage.
"""
from typing import Any

import numpy as np

# Official parameter-free buffers.
_IGNORED_SUFFIXES = (".attn.mask",)

_BLOCK_PARTS = {
    "ln1.weight": ("ln1", "scale", False),
    "ln1.bias": ("ln1", "bias", False),
    "ln2.weight": ("ln2", "scale", False),
    "ln2.bias": ("ln2", "bias", False),
    "attn.query.weight": ("attn/query", "kernel", True),
    "attn.query.bias": ("attn/query", "bias", False),
    "attn.key.weight": ("attn/key", "kernel", True),
    "attn.key.bias": ("attn/key", "bias", False),
    "attn.value.weight": ("attn/value", "kernel", True),
    "attn.value.bias": ("attn/value", "bias", False),
    "attn.proj.weight": ("attn/proj", "kernel", True),
    "attn.proj.bias": ("attn/proj", "bias", False),
    "mlp.0.weight": ("mlp_fc", "kernel", True),
    "mlp.0.bias": ("mlp_fc", "bias", False),
    "mlp.2.weight": ("mlp_out", "kernel", True),
    "mlp.2.bias": ("mlp_out", "bias", False),
}

_TOP_PARTS = {
    "value_emb.weight": ("value_emb", "embedding", False),
    "value_pos_emb.weight": ("value_pos_emb", "embedding", False),
    "value_head.0.weight": ("code_head_ln", "scale", False),
    "value_head.0.bias": ("code_head_ln", "bias", False),
    "value_head.1.weight": ("code_head", "kernel", True),
    "position_head.0.weight": ("position_head_ln", "scale", False),
    "position_head.0.bias": ("position_head_ln", "bias", False),
    "position_head.1.weight": ("position_head", "kernel", True),
}

_STACKS = {"value_transformer": "code_blocks", "position_transformer": "position_blocks"}


def _target(name: str):
  """Official key (prefix removed) -> (flax path tuple, transpose) or None if unknown."""
  if name == "pos_emb":
    return ("pos_emb",), False
  if name in _TOP_PARTS:
    module, leaf, transpose = _TOP_PARTS[name]
    return (module, leaf), transpose
  stack, _, rest = name.partition(".")
  if stack in _STACKS:
    layer, _, part = rest.partition(".")
    if layer.isdigit() and part in _BLOCK_PARTS:
      module, leaf, transpose = _BLOCK_PARTS[part]
      return (f"{_STACKS[stack]}_{int(layer)}", *module.split("/"), leaf), transpose
  return None


def _expected_keys(layers: dict[str, int]) -> set[str]:
  keys = {"pos_emb", *_TOP_PARTS}
  for stack, n in layers.items():
    keys |= {f"{stack}.{i}.{part}" for i in range(n) for part in _BLOCK_PARTS}
  return keys


def stackformer_params_from_torch(sd: dict[str, np.ndarray], prefix: str = "transformer.") -> dict:
  """Converts an official state dict (arrays) to `{"params": ...}` for `Stackformer`.

  Args:
    sd: torch state dict as numpy arrays; keys outside `prefix` are ignored (a full stage-2
      checkpoint also holds the first stage).
    prefix: "transformer." (official checkpoints, both uncond and class) or "class_transformer."
      (the golden file's class model).

  Raises:
    ValueError: listing unknown and missing keys; nothing is returned then.
  """
  own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  own = {k: v for k, v in own.items() if not k.endswith(_IGNORED_SUFFIXES)}
  unknown = sorted(k for k in own if _target(k) is None)
  layers = {}
  for stack in _STACKS:
    ids = {int(k.split(".")[1]) for k in own if k.startswith(stack + ".") and _target(k)}
    layers[stack] = max(ids) + 1 if ids else 0
  missing = sorted(_expected_keys(layers) - set(own))
  if unknown or missing:
    raise ValueError(f"cannot convert Stackformer weights under prefix {prefix!r}: "
                     f"unknown keys {unknown}; missing keys {missing}")
  params: dict[str, Any] = {}
  for name, value in own.items():
    path, transpose = _target(name)
    value = np.asarray(value, np.float32)
    if name == "pos_emb":
      value = value.reshape(value.shape[-2:])
    if transpose:
      value = value.T
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return {"params": params}


def stackformer_kwargs_from_official(params: dict) -> dict:
  """Official `ReverseStackedPositionGPT` config params (+ n_classes if known) -> our kwargs."""
  known = {"vocab_size", "position_size", "block_size", "n_embd", "n_head", "value_layer",
           "position_layer", "embd_pdrop", "resid_pdrop", "attn_pdrop", "n_unmasked",
           "add_absolute_position", "n_classes"}
  unknown = sorted(set(params) - known)
  if unknown:
    raise ValueError(f"unknown official Stackformer config keys: {unknown}")
  if params.get("n_unmasked", 0):
    raise ValueError(f"n_unmasked={params['n_unmasked']} is not supported (official configs use 0)")
  return dict(
      vocab_size=int(params["vocab_size"]),
      position_size=int(params["position_size"]),
      block_size=int(params["block_size"]),
      d_model=int(params.get("n_embd", 256)),  # official defaults: n_embd 256, n_head 8,
      n_heads=int(params.get("n_head", 8)),  # 12 + 12 layers, no dropout.
      code_layers=int(params.get("value_layer", 12)),
      position_layers=int(params.get("position_layer", 12)),
      embd_dropout=float(params.get("embd_pdrop", 0.0)),
      resid_dropout=float(params.get("resid_pdrop", 0.0)),
      attn_dropout=float(params.get("attn_pdrop", 0.0)),
      n_classes=int(params.get("n_classes", 0)),
      use_abs_pos=bool(params.get("add_absolute_position", True)),
  )
