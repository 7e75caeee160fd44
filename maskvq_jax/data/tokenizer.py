"""Saving and restoring a frozen tokenizer (MQ-VAE variables + the kwargs that built it).

A tokenizer directory is an Orbax CheckpointManager directory whose steps hold two items:
`variables` ({"params", "batch_stats", "vq_stats"}) and `meta` (JSON: {"model": MQVAE kwargs,
"source": ...}). The model config travels with the weights, so a consumer (stage 2, evaluation)
never restates it and can't silently change the keep ratio, the grid or the codebook.
"""
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from maskvq_jax.core import files


def _path(directory: str) -> str:
  """Absolute local paths (Orbax needs them); remote URLs such as gs://... pass through."""
  return files.absolute(directory)


def _jsonable(kwargs: Mapping[str, Any]) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k != "dtype"}


def model_kwargs_from_meta(meta: Mapping[str, Any]) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}


def save_tokenizer(directory: str, variables: Mapping[str, Any], model_kwargs: Mapping[str, Any],
                   step: int = 0, extra_meta: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `variables` + kwargs at `step`. Refuses to overwrite an existing step."""
  directory = _path(directory)
  meta = {"model": _jsonable(model_kwargs), **(extra_meta or {})}
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
  with ocp.CheckpointManager(directory, options=options) as mngr:
    if step in mngr.all_steps():
      raise FileExistsError(f"{directory} already holds step {step}; refusing to overwrite it")
    variables = jax.tree.map(np.asarray, dict(variables))
    mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                            meta=ocp.args.JsonSave(meta)))
  return files.join(directory, str(step))


def read_meta(directory: str, step: Optional[int] = None) -> tuple[dict, int]:
  """The JSON metadata of `step` (default: latest) without reading any array."""
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(_path(directory), options=options) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no tokenizer checkpoint in {directory}")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  return meta, step


def load_tokenizer(directory: str, step: Optional[int] = None):
  """Returns (MQVAE module, variables as numpy arrays, meta)."""
  from maskvq_jax.models import MQVAE  # local: keeps this module import-light
  from maskvq_jax.models import mqvae as mqvae_lib
  meta, step = read_meta(directory, step)
  model = MQVAE(**model_kwargs_from_meta(meta))
  abstract = mqvae_lib.abstract_variables(model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(_path(directory), options=options) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract))))
  return model, jax.tree.map(np.asarray, dict(restored.variables)), meta
