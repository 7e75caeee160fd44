"""Which config changes a resumed run may make: the stored config against this run's, field by field.

Both trainers store their (resolved) config in every checkpoint's meta (`loop.run_meta`). Before a
step is restored, `checker(config)` compares it with the running config and names every differing
field (`model.ch_mult: checkpoint (1, 2) vs config (1, 1, 2)`); checkpointing.py turns a non-empty
list into `IncompatibleCheckpointError` and moves nothing.

Compared, always (this workdir's checkpoints and `config.resume`): what defines the trained
weights and their shapes -- STATE_FIELDS: `trainer`, `model.*`, `disc.*` (stage 1),
`text_encoder.*` (stage 2), plus trainer-given facts such as stage 2's tokenizer geometry.
Compared when resuming this workdir's own run (not for `config.resume`, which starts a new run
from another's weights, e.g. to fine-tune with another learning rate): RUN_FIELDS, the optimizer
and objective -- `optim.*`, `loss.*`, `seed`, `param_ema`, `ema_updates_per_step`.

Free to change on resume (everything else), e.g. `total_steps` / `total_epochs` / `run_steps`,
log / checkpoint / eval / sample cadence and settings, `mesh` and `sharding_rules` (restores
reshard), `compute_dtype` (params and optimizer stay float32), the input pipeline including
`input.batch_size` (the data position is kept in examples; with `optim.lr < 0` the learning rate
follows the new global batch by the authors' rule base_lr x batch), paths (`input.data_dir`,
`tokenizer`, `resume`) and the lock options. A field present on only one side (a checkpoint from
an older code version) is not compared. Also free, although under `model.*`: the EXECUTION_FIELDS,
which change how the same weights are computed, not the weights: `model.remat_policy`,
`model.attention_impl` and `model.scan_layers` (the stage-2 trainer restores a checkpoint stored in
the other layer layout and converts it with `transformer.relayout_tree`); and, although under
`optim.*`, `optim.grad_accum_steps`, which splits the same global batch into micro-batches (stage
2: the same update up to dropout masks; stage 1: BatchNorm and EMA-codebook statistics move once per micro-batch), so a
run resumed on smaller devices may accumulate more.
"""
import json
from typing import Any, Callable, Optional

STATE_FIELDS = ("trainer", "model", "disc", "text_encoder")
RUN_FIELDS = ("optim", "loss", "seed", "param_ema", "ema_updates_per_step")
EXECUTION_FIELDS = ("model.scan_layers", "model.remat_policy", "model.attention_impl",
                    "model.remat", "optim.grad_accum_steps")


def _norm(v: Any) -> Any:
  """JSON lists -> tuples (config tuples are stored as lists), recursively."""
  if isinstance(v, (list, tuple)):
    return tuple(_norm(x) for x in v)
  if isinstance(v, dict):
    return {k: _norm(x) for k, x in v.items()}
  return v


def differences(stored: dict, current: dict, fields, prefix: str = "") -> list[str]:
  """"name: checkpoint X vs config Y" for every differing leaf under `fields` (present in both)."""
  out = []
  for k in fields:
    if k not in stored or k not in current:
      continue
    a, b = _norm(stored[k]), _norm(current[k])
    name = f"{prefix}{k}"
    if name in EXECUTION_FIELDS:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, [x for x in b if x in a], prefix=name + ".")
    elif a != b:
      out.append(f"{name}: checkpoint {a!r} vs config {b!r}")
  return out


def checker(config, extra: Optional[dict] = None) -> Callable[[dict, bool], list]:
  """fn(meta, own_run) -> differences between a checkpoint's meta and this run.

  Args:
    config: this run's (resolved) config, as stored by `loop.run_meta`.
    extra: {meta key: {field: value}} facts the trainer also stores in the meta and that must
      agree (stage 2: {"tokenizer": geometry}); compared in both modes.
  """
  current = json.loads(config.to_json_best_effort())
  extra = dict(extra or {})

  def check(meta: dict, own_run: bool) -> list:
    fields = STATE_FIELDS + (RUN_FIELDS if own_run else ())
    diffs = differences(meta.get("config") or {}, current, fields)
    for key, facts in extra.items():
      diffs += differences({key: meta.get(key) or {}}, {key: facts}, (key,))
    return diffs

  return check
