"""Official MQ-VAE (PyTorch) state dicts and configs -> our Flax variables and module kwargs.

Torch names are mapped by rule onto our module tree (`down.2.block.0` -> `down_2_block_0`, ...),
layouts are converted (conv OIHW -> HWIO, Linear [out, in] -> [in, out], 1x1 convs used as Linear
layers -> [in, out]), BatchNorm statistics go to "batch_stats" and the EMA codebook buffers to
"vq_stats" (the codebook's unused padding row is dropped). The dead `temb_proj` layers of the
de-mask ResnetBlocks, the causal-mask buffers and `num_batches_tracked` are ignored. Every
unknown, missing or mis-shaped tensor is reported in one ValueError; nothing is returned then.
"""
import re
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IGNORED = (re.compile(r"\.temb_proj\."), re.compile(r"\.attn\.mask$"), re.compile(r"num_batches_tracked$"),
           re.compile(r"^loss\."))  # the Lightning module's loss (LPIPS + discriminator) is not the tokenizer

from maskvq_jax.models.mqvae import STORED_COLLECTIONS, abstract_variables  # re-exported for callers

_MODULE_RULES = [  # (regex on the torch module path, replacement giving our '/'-joined path)
    (r"^(encoder)\.down\.(\d+)\.(block|attn)\.(\d+)\.", r"\1/down_\2_\3_\4/"),
    (r"^(encoder)\.down\.(\d+)\.downsample\.conv\.", r"\1/down_\2_downsample/conv/"),
    (r"^(decoder)\.up\.(\d+)\.(block|attn)\.(\d+)\.", r"\1/up_\2_\3_\4/"),
    (r"^(decoder)\.up\.(\d+)\.upsample\.conv\.", r"\1/up_\2_upsample/conv/"),
    (r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.", r"\1/mid_\2/"),
    (r"^demasker\.transformer\.blocks\.(\d+)\.(resblock|attn)\.", r"demasker/blocks_\1_\2/"),
    (r"^demasker\.transformer\.last_resblock\.", r"demasker/last_resblock/"),
    (r"^quantize\.codebook\.", r"quantize/"),
]
_SCORER_LAYERS = {"conv": {"1": "score_conv1", "3": "score_conv2", "4": "score_bn"},
                  "mlp": {"0": "score_fc1", "2": "score_fc2"}, "random": {}}


def _flax_path(key: str, scorer: str):
  """torch key -> (collection, tuple path) or None when the key has no counterpart."""
  m = re.match(r"^masker\.score_pred_net\.(\d+)\.(\w+)$", key)
  if m:
    layer = _SCORER_LAYERS[scorer].get(m.group(1))
    if layer is None:
      return None
    leaf = m.group(2)
    if layer == "score_bn" and leaf in ("running_mean", "running_var"):
      return "batch_stats", ("masker", layer, {"running_mean": "mean", "running_var": "var"}[leaf])
    return "params", ("masker", layer, leaf)
  path = key
  for pat, rep in _MODULE_RULES:
    path, n = re.subn(pat, rep, path)
    if n:
      break
  parts = path.replace(".", "/").split("/")
  if parts[0] == "quantize":
    return "vq_stats", ("quantize", {"weight": "codebook"}.get(parts[-1], parts[-1]))
  return "params", tuple(parts)


def _rename_leaf(path, ndim: int):
  """torch leaf names -> ours: `weight` is `scale` on norms (1-D) and `kernel` elsewhere."""
  *mods, leaf = path
  if leaf == "weight":
    leaf = "scale" if ndim == 1 else "kernel"
  return (*mods, leaf)


def _convert_layout(leaf: str, value, target_shape):
  """Converts one torch tensor to our layout for a target of shape `target_shape`."""
  value = np.asarray(value, np.float32)
  if leaf == "kernel":
    if value.ndim == 4 and len(target_shape) == 4:
      return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.ndim == 4:
      return value[:, :, 0, 0].T  # 1x1 conv used as a Linear layer
    return value.T  # Linear [out, in] -> [in, out]
  if leaf == "mask_token":
    return value.reshape(-1)
  if leaf == "codebook":
    return value[:target_shape[0]]  # drop the unused padding row
  return value


def convert_state_dict(sd: Mapping[str, Any], target: Mapping[str, Any], scorer: str,
                       prefix: str = "") -> dict:
  """Maps torch tensors onto a variables tree shaped like `target` (arrays or ShapeDtypeStructs).

  Args:
    sd: torch state dict (name -> array); keys outside `prefix` are ignored.
    target: our variables (e.g. `jax.eval_shape(model.init, ...)`, unboxed), collections at the top.
    scorer: the masker variant, which decides how `score_pred_net.<i>` maps.
    prefix: prefix of the tokenizer's keys in `sd` (e.g. "first_stage_model." in a stage-2 checkpoint).
  Returns:
    A dict of collections with numpy arrays.
  Raises:
    ValueError listing unknown keys, missing keys and shape mismatches.
  """
  flat_target = {(col,) + tuple(k): v for col, tree in target.items()
                 for k, v in flax.traverse_util.flatten_dict(dict(tree)).items()}
  out, unknown, mismatched = {}, [], []
  for key, value in sd.items():
    if not key.startswith(prefix):
      continue
    key = key[len(prefix):]
    if any(p.search(key) for p in IGNORED):
      continue
    loc = _flax_path(key, scorer)
    if loc is None:
      unknown.append(key)
      continue
    col, path = loc
    new_path = _rename_leaf(path, np.ndim(value))
    tgt = flat_target.get((col,) + new_path)
    if tgt is None:
      unknown.append(key)
      continue
    arr = _convert_layout(new_path[-1], value, tuple(tgt.shape))
    if tuple(arr.shape) != tuple(tgt.shape):
      mismatched.append(f"{key}: {tuple(np.shape(value))} -> {tuple(arr.shape)}, expected {tuple(tgt.shape)}")
      continue
    out[(col,) + new_path] = arr
  missing = sorted("/".join(k) for k in flat_target if k not in out)
  if unknown or missing or mismatched:
    lines = []
    for title, items in (("unknown keys", unknown), ("missing (ours, not in the checkpoint)", missing),
                         ("shape mismatches", mismatched)):
      if items:
        lines.append(f"{title} ({len(items)}):\n  " + "\n  ".join(items))
    raise ValueError("checkpoint does not match the model:\n" + "\n".join(lines))
  nested = {}
  for k, v in out.items():
    nested.setdefault(k[0], {})[k[1:]] = v
  return {col: flax.traverse_util.unflatten_dict(t) for col, t in nested.items()}


def mqvae_kwargs_from_official(vae_params: Mapping[str, Any]) -> dict:
  """The official `MaskedVectorQuantizationModel` params (YAML `model.params`) -> MQVAE kwargs."""
  enc = vae_params["encoder_config"]["params"]
  dec = vae_params["decoder_config"]["params"]
  msk = vae_params["masker_config"]
  vq = vae_params["vqconfig"]["params"]
  dem = vae_params["demasker_config"]["params"]
  target = msk.get("target", "")
  if "masker_random" in target:
    scorer = "random"
  else:
    mode = msk["params"].get("score_pred_net_mode", "2layer")
    scorer = {"2layer": "conv", "2layer-fc": "mlp"}.get(mode)
    if scorer is None:
      raise ValueError(f"unknown official score_pred_net_mode={mode!r}")
    if scorer == "mlp" and "refine" in target or scorer == "conv" and target.endswith("masker_vanilla.VanillaMasker"):
      raise ValueError(f"masker target {target!r} does not support score_pred_net_mode={mode!r}")
  if enc.get("double_z", False):
    raise ValueError("double_z=True encoders are not MQ-VAE tokenizers")
  return dict(
      resolution=int(enc["resolution"]), in_channels=int(enc.get("in_channels", 3)),
      out_channels=int(dec.get("out_ch", 3)), ch=int(enc["ch"]), ch_mult=tuple(int(m) for m in enc["ch_mult"]),
      num_res_blocks=int(enc["num_res_blocks"]), attn_resolutions=tuple(int(r) for r in enc["attn_resolutions"]),
      z_channels=int(enc["z_channels"]), dropout=float(enc.get("dropout", 0.0)), scorer=scorer,
      keep_ratio=float(msk["params"]["topk_ratio"]), codebook_size=int(vq["codebook_size"]),
      codebook_dim=int(vq["codebook_dim"]), beta=float(vq.get("commitment_beta", 0.25)),
      ema_decay=float(vq.get("decay", 0.99)), restart_unused_codes=bool(vq.get("restart_unused_codes", True)),
      demasker_layers=int(dem["n_layer"]), mask_init_value=float(dem.get("mask_init_value", 0.02)))
