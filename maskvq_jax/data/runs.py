"""Finding and loading what to evaluate: tokenizer directories and trainer workdirs.

Why one loader: ablations mix converted official tokenizers (`tokenizer_io` directories), our
stage-1 workdirs (`<workdir>/checkpoints/<step>/{state, meta, data}`, `checkpointing.py`) and
stage-2 workdirs. Evaluation needs only the frozen weights, so trainer checkpoints are read with a
PARTIAL restore (generator params, scorer batch stats, EMA codebook; the EMA params when the run
kept them), never the optimizer state or the discriminator. Weights come back as host numpy
arrays: each process then puts them on its mesh (`jax.device_put(numpy, sharding)` works on any
number of hosts; a jax.Array on one local device cannot be moved to devices of other hosts).

Layouts recognised by `describe(path)`:
  * "tokenizer": a tokenizer_io directory (steps holding `variables` + `meta`), or
    `<workdir>/tokenizer/` holding one;
  * "stage1": `<workdir>/checkpoints/` whose meta.config.trainer == "mqvae";
  * "stage2": `<workdir>/checkpoints/` whose meta.config.trainer is "stackformer" or "dense_gpt"
    (see `load_stage2` for the fields it expects).
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from maskvq_jax.models import mqvae as mqvae_lib
from maskvq_jax.data import tokenizer as tokenizer_io
from maskvq_jax.core import files
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.mqvae import MQVAE
from maskvq_jax.models.stackformer import Stackformer

STAGE2_TRAINERS = ("stackformer", "dense_gpt")
TOKENIZER_KEYS = ("tokenizer", "tokenizer_dir", "stage1_workdir")  # stage-2 config fields


@dataclasses.dataclass
class Located:
  kind: str                       # "tokenizer" | "stage1" | "stage2"
  path: str                       # the directory to restore from
  step: int
  meta: dict                      # the checkpoint's JSON meta


def _steps(directory: str) -> list[int]:
  """Committed step numbers (Orbax writes in-progress saves under non-numeric tmp names)."""
  if not files.isdir(directory):
    return []
  return sorted(int(n) for n in files.listdir(directory)
                if n.isdigit() and files.isdir(files.join(directory, n)))


def _read_json_meta(directory: str, step: int) -> dict:
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(directory, options=options) as mngr:
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def describe(path: str, step: Optional[int] = None) -> Located:
  """Works out what `path` holds (see the module docstring). Raises FileNotFoundError if none."""
  path = files.absolute(path)
  for ckpt_dir in (files.join(path, "checkpoints"), path):
    steps = _steps(ckpt_dir)
    if not steps:
      continue
    s = steps[-1] if step is None else step
    if s not in steps:
      raise FileNotFoundError(f"step {s} not in {ckpt_dir} (have {steps})")
    if files.isdir(files.join(ckpt_dir, str(s), "variables")):
      return Located("tokenizer", ckpt_dir, s, _read_json_meta(ckpt_dir, s))
    if files.isdir(files.join(ckpt_dir, str(s), "state")):
      meta = _read_json_meta(ckpt_dir, s)
      trainer = meta.get("config", {}).get("trainer")
      if trainer == "mqvae":
        return Located("stage1", ckpt_dir, s, meta)
      if trainer in STAGE2_TRAINERS:
        return Located("stage2", ckpt_dir, s, meta)
      raise ValueError(f"{ckpt_dir} step {s}: unknown trainer {trainer!r} in its meta config")
  tok = files.join(path, "tokenizer")
  if files.isdir(tok):
    return describe(tok, step)
  raise FileNotFoundError(
      f"{path} holds no tokenizer or trainer checkpoint (looked for <dir>/checkpoints/<step>/"
      "state, <dir>/<step>/variables and <dir>/tokenizer/)")


def _model_kwargs(d: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "dtype"}


def _single_device(tree):
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev), tree)


def _partial_restore(directory: str, step: int, item: dict) -> dict:
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(directory, options=options) as mngr:
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
  return host_arrays(dict(out.state))


def host_arrays(tree):
  """The tree with every array as host numpy (what a caller may device_put onto any mesh)."""
  return jax.tree.map(np.asarray, tree)


def tokenizer_info(model, **extra) -> dict:
  """The numbers an ablation table needs about a tokenizer."""
  return {"keep_ratio": 1.0 if model.dense else float(model.keep_ratio),
          "tokens_per_image": int(model.num_tokens), "grid": int(model.grid),
          "grid_tokens": int(model.grid) ** 2, "codebook_size": int(model.codebook_size),
          "resolution": int(model.resolution), "dense": bool(model.dense), **extra}


def load_tokenizer(path: str, step: Optional[int] = None):
  """(MQVAE, variables {"params", "batch_stats"?, "vq_stats"}, info) from any tokenizer layout.

  For a stage-1 workdir, the EMA parameters are used when the run kept them (config.param_ema >
  0), as in the trainer's eval; otherwise the generator parameters.
  """
  loc = describe(path, step)
  if loc.kind == "stage2":
    return load_tokenizer(stage2_tokenizer_path(loc), None)
  if loc.kind == "tokenizer":
    model, variables, meta = tokenizer_io.load_tokenizer(loc.path, loc.step)
    return model, host_arrays(dict(variables)), tokenizer_info(model, kind="tokenizer", step=loc.step,
                                                  path=loc.path, source=meta.get("source"))
  config = loc.meta["config"]
  model = MQVAE(**_model_kwargs(config["model"]))
  abstract = _single_device(mqvae_lib.abstract_variables(model))
  use_ema = float(config.get("param_ema", 0.0) or 0.0) > 0
  item: dict[str, Any] = {"vq_stats": abstract["vq_stats"]}
  item["ema_params" if use_ema else "params"] = (
      abstract["params"] if use_ema else {"g": abstract["params"]})
  if "batch_stats" in abstract:
    item["batch_stats"] = {"g": abstract["batch_stats"]}
  state = _partial_restore(loc.path, loc.step, item)
  variables = {"params": state["ema_params"] if use_ema else state["params"]["g"],
               "vq_stats": state["vq_stats"]}
  if "batch_stats" in abstract:
    variables["batch_stats"] = state["batch_stats"]["g"]
  return model, variables, tokenizer_info(model, kind="stage1", step=loc.step, path=loc.path,
                                          ema_params=use_ema)


def dataset_defaults(loc: Located) -> Optional[dict]:
  """Evaluation dataset fields from a trainer workdir's config (None for tokenizer dirs)."""
  config = loc.meta.get("config")
  if not config or "input" not in config:
    return None
  inp, ev = config["input"], config.get("eval", {})
  return {"name": inp.get("name"), "source": inp.get("source", "tfds"),
          "split": ev.get("split", "validation"), "res": inp.get("res"),
          "data_dir": inp.get("data_dir", ""), "folder": inp.get("folder", ""),
          "data_seed": inp.get("data_seed", 0), "num_examples": ev.get("num_examples", -1)}


# ----- stage 2 -----------------------------------------------------------------------------------
def stage2_tokenizer_path(loc: Located) -> str:
  config = loc.meta.get("config", {})
  for k in TOKENIZER_KEYS:
    v = config.get(k)
    if isinstance(v, str) and v:
      return v
  raise ValueError(f"stage-2 checkpoint {loc.path} step {loc.step}: its meta config names no "
                   f"tokenizer (expected one of the fields {list(TOKENIZER_KEYS)})")


def load_stage2(path: str, step: Optional[int] = None):
  """(Stackformer or DenseGPT, {"params": ...}, info) of a stage-2 workdir.

  Expected layout (to be confirmed by the stage-2 trainer): `<workdir>/checkpoints/<step>/` with
  `meta.config.trainer == "stackformer"`, `meta.config.model` = Stackformer kwargs, a tokenizer
  path in one of `TOKENIZER_KEYS`, and `state.params` (or `state.ema_params` when
  config.param_ema > 0) = the Stackformer's "params" collection.
  """
  loc = describe(path, step)
  if loc.kind != "stage2":
    raise ValueError(f"{path} is a {loc.kind} directory, not a stage-2 (Stackformer) workdir")
  config = loc.meta["config"]
  if "model" not in config:
    raise ValueError(f"stage-2 checkpoint {loc.path}: meta config has no 'model' (Stackformer "
                     "kwargs)")
  tok = jnp.zeros((1, 2), jnp.int32)
  if config.get("trainer") == "dense_gpt":
    from maskvq_jax.stage2 import dense  # pylint: disable=import-outside-toplevel
    model = DenseGPT(**dense.model_kwargs(config["model"]))
    abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), tok)))
  else:
    model = Stackformer(**_model_kwargs(config["model"]))
    text = {}
    if model.text_dim:  # text models need (dummy) text features to trace their init
      text = dict(text=jnp.zeros((1, 1, model.text_dim)), text_mask=jnp.ones((1, 1), bool))
    abstract = nn.meta.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), tok, tok, tok, **text)))
  use_ema = float(config.get("param_ema", 0.0) or 0.0) > 0
  key = "ema_params" if use_ema else "params"
  state = _partial_restore(loc.path, loc.step, {key: _single_device(abstract["params"])})
  info = {"kind": "stage2", "step": loc.step, "path": loc.path,
          "tokenizer": stage2_tokenizer_path(loc), "trainer": config.get("trainer"),
          "n_classes": int(getattr(model, "n_classes", 0)),
          "text_dim": int(getattr(model, "text_dim", 0))}
  return model, {"params": state[key]}, info
