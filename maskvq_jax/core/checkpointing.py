"""Orbax checkpointing for all trainers: one manager, one restore policy.

Each step directory holds three items: `state` (the sharded train state, StandardSave), `meta`
(config + run metadata, JSON) and `data` (the input iterators' positions, JSON). Every process
reads its own share of the data, so each has its own position: `gather_process_states` collects
them all into the `data` item (written by the primary process), and each process picks its own on
restore (`data.pipeline.restore_position`). Saves are async
(the device->host copy happens before `save` returns, so the trainer may donate the state right
after). Restores reshard onto whatever mesh the abstract target carries.

Restore policy (nothing valid is ever moved or deleted): `restore_latest` walks the steps
newest-first and, for each, (1) reads its meta and lets the caller's `check` compare the stored
config with this run's (core/resume_guard.py), (2) reads the stored tree metadata (paths, shapes,
dtypes) and compares it with the abstract target, and only then (3) restores the arrays. A
difference in (1) or (2) is the user's configuration, not damage: `IncompatibleCheckpointError`
names the first differing fields / keys and shapes, and nothing is touched. A step whose files
cannot be read or decoded (truncated, garbled, missing pieces) is corrupt: it is logged with the
error, moved aside into `<dir>/../corrupt_checkpoints/<step>-<time>/` (on object stores: copied
there, then deleted) so later saves of the same step number do not collide, and the previous step
is tried. Errors that say nothing about the files (network timeouts, permissions, out of memory,
the storage's UNAVAILABLE / DEADLINE_EXCEEDED ...) are raised, never taken for corruption. A
`read_only` checkpointer (another run's directory, config.resume, evaluation) never writes, moves
or deletes: it skips an unreadable step with a warning. Uncommitted (tmp) saves are never listed
by Orbax in the first place. A save that cannot be written (disk full, read-only or misplaced
directory) raises `CheckpointWriteError` naming the directory and the last committed step; Orbax
commits a step by renaming its tmp directory, so earlier steps are never touched.
"""
import json
import time
from typing import Any, Callable, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from maskvq_jax.core import files
# A config check: (stored meta, own_run) -> list of "field: checkpoint X vs config Y" differences.
MetaCheck = Callable[[dict, bool], list]
# fn(meta of a step) -> None (restore onto this run's abstract state) or (abstract state in the
# stored layout, fn converting the restored state to this run's), e.g. stage 2's scan_layers.
LayoutAdapter = Callable[[dict], Optional[tuple]]

_SHOWN = 6  # differences named in one message


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; earlier committed steps are intact."""


class CheckpointRestoreError(ValueError):
  """A run cannot start from the checkpoints it was pointed at; nothing was moved or deleted."""


class IncompatibleCheckpointError(CheckpointRestoreError):
  """A readable checkpoint of another configuration or state structure; nothing was moved."""


# Status codes (tensorstore / gRPC) and exception types that describe the storage or the machine,
# not the files: such a restore error is raised, never taken for corruption.
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAUTHENTICATED",
                    "RESOURCE_EXHAUSTED", "CANCELLED", "ABORTED")
_TRANSIENT_TYPES = (ConnectionError, TimeoutError, PermissionError, MemoryError)


def is_transient(e: BaseException) -> bool:
  """True for restore errors that say nothing about the checkpoint's files."""
  if isinstance(e, _TRANSIENT_TYPES) or not isinstance(e, Exception):
    return True
  msg = str(e)
  return any(f"{code}:" in msg for code in _TRANSIENT_CODES)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat(tree) -> dict:
  """{"a/b/c": leaf} of a pytree (None and empty containers have no leaves)."""
  return {"/".join(_key_name(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shape_dtype(leaf) -> str:
  shape = getattr(leaf, "shape", None)
  dtype = getattr(leaf, "dtype", None)
  return f"{tuple(shape) if shape is not None else '?'} {np.dtype(dtype).name if dtype is not None else '?'}"


def tree_differences(stored, target) -> list[str]:
  """Keys, shapes and dtypes in which a stored tree (metadata) and an abstract target differ."""
  a, b = _flat(stored), _flat(target)
  out = []
  for k, t in b.items():
    if k not in a:
      out.append(f"{k}: not in the checkpoint (this run has {_shape_dtype(t)})")
      continue
    s = a[k]
    s_shape, t_shape = getattr(s, "shape", None), getattr(t, "shape", None)
    s_dt, t_dt = getattr(s, "dtype", None), getattr(t, "dtype", None)
    if (s_shape is not None and t_shape is not None and tuple(s_shape) != tuple(t_shape)) or (
        s_dt is not None and t_dt is not None and np.dtype(s_dt) != np.dtype(t_dt)):
      out.append(f"{k}: checkpoint {_shape_dtype(s)} vs this run {_shape_dtype(t)}")
  out += [f"{k}: only in the checkpoint ({_shape_dtype(s)})" for k, s in a.items() if k not in b]
  return out


def _summary(diffs: list[str]) -> str:
  more = len(diffs) - _SHOWN
  return "; ".join(diffs[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with keep-last-N + keep-every-M and fallbacks."""

  def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 3,
               keep_every: Optional[int] = None, async_save: bool = True, read_only: bool = False):
    self.directory = epath.Path(files.absolute(directory))  # Orbax needs absolute local paths
    self._opts = dict(save_interval_steps=max(int(save_every), 1), max_to_keep=max_to_keep,
                      keep_period=keep_every if keep_every and keep_every > 0 else None,
                      enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
    self._open()

  def _open(self):
    if self.directory.exists() and not self.directory.is_dir():  # Orbax would fail only on save
      raise CheckpointWriteError(
          f"cannot open checkpoint directory {self.directory}: it exists and is not a directory; "
          "move it away or choose another --workdir")
    try:
      self.mngr = ocp.CheckpointManager(self.directory,
                                        options=ocp.CheckpointManagerOptions(**self._opts))
    except OSError as e:
      raise CheckpointWriteError(
          f"cannot open checkpoint directory {self.directory} ({type(e).__name__}: {e}); is the "
          "workdir writable, and a directory?") from e

  def _write_error(self, what: str, e: OSError) -> CheckpointWriteError:
    try:
      last = self.mngr.latest_step()
    except Exception:  # pylint: disable=broad-except  # only for the message
      last = None
    return CheckpointWriteError(
        f"cannot write {what} to {self.directory} ({type(e).__name__}: {e}); earlier checkpoints "
        f"are intact (latest committed step: {last}). Free space or fix permissions, then rerun "
        "with the same --workdir to resume.")

  # -- queries -------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    return sorted(self.mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.mngr.latest_step()

  def should_save(self, step: int) -> bool:
    return self.mngr.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    return self.mngr.reached_preemption(step)

  # -- save ----------------------------------------------------------------------------------
  def save(self, step: int, state: Any, *, meta: dict, data_state: Optional[dict] = None,
           force: bool = False) -> bool:
    """Saves if the manager's interval says so (or `force`). Returns whether a save started."""
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                 data=ocp.args.JsonSave(data_state or {}))
    try:
      return self.mngr.save(step, args=ocp.args.Composite(**items), force=force)
    except OSError as e:
      raise self._write_error(f"checkpoint step {step}", e) from e

  def wait(self):
    try:
      self.mngr.wait_until_finished()
    except OSError as e:
      raise self._write_error("a checkpoint (async commit)", e) from e

  def close(self):
    try:
      self.wait()
    finally:
      self.mngr.close()

  # -- restore -------------------------------------------------------------------------------
  def restore(self, step: int, abstract_state: Any):
    """(state, meta, data_state) of `step`, resharded onto `abstract_state`'s shardings."""
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore(),
                 data=ocp.args.JsonRestore())
    out = self.mngr.restore(step, args=ocp.args.Composite(**items))
    return out.state, out.meta, out.data

  def read_step_meta(self, step: int) -> dict:
    """The JSON metadata of `step` (config, run facts) without touching the arrays."""
    return self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def stored_tree(self, step: int):
    """The stored state's tree metadata (paths, shapes, dtypes) of `step`; reads no array data."""
    handler = ocp.StandardCheckpointHandler()
    try:
      md = handler.metadata(self.directory / str(step) / "state")
    finally:
      handler.close()
    return getattr(md, "tree", md)

  def check_step(self, step: int, abstract_state: Any, check: Optional[MetaCheck] = None,
                 own_run: bool = True, hint: str = ""):
    """Raises IncompatibleCheckpointError if `step` is readable but of another config/structure.

    Errors reading the meta or the tree metadata propagate (the caller decides about corruption).
    """
    meta = self.read_step_meta(step)
    diffs = check(meta, own_run) if check is not None else []
    if diffs:
      raise IncompatibleCheckpointError(
          f"checkpoint step {step} in {self.directory} was written with another configuration: "
          f"{_summary(diffs)}. Nothing was moved or deleted.{hint}")
    diffs = tree_differences(self.stored_tree(step), abstract_state)
    if diffs:
      raise IncompatibleCheckpointError(
          f"checkpoint step {step} in {self.directory} does not fit this run's train state "
          f"({len(diffs)} differences): {_summary(diffs)}. Nothing was moved or deleted.{hint}")
    return meta

  def restore_latest(self, abstract_state: Any, check: Optional[MetaCheck] = None,
                     own_run: bool = True, hint: str = "",
                     adapt: Optional[LayoutAdapter] = None):
    """Newest restorable step: (step, state, meta, data_state), or None if there is none.

    `check(meta, own_run)` compares the stored config with this run's; it and a tree mismatch
    raise IncompatibleCheckpointError (nothing moved). Unreadable steps are quarantined (read-only:
    skipped) and the previous step is tried; transient errors are raised. `adapt` (see
    LayoutAdapter) restores a step stored in another layout of the same weights and converts it.
    """
    for step in reversed(self.all_steps()):
      error, convert = None, None
      try:
        target = abstract_state
        if adapt is not None:
          target, convert = adapt(self.read_step_meta(step)) or (abstract_state, None)
        self.check_step(step, target, check, own_run, hint)
        out = (step,) + self.restore(step, target)
      except IncompatibleCheckpointError:
        raise
      except BaseException as e:  # pylint: disable=broad-except  # classified just below
        if is_transient(e):
          raise
        error, out = e, None
      if not self._agree_unreadable(error is not None):
        if convert is not None:
          logging.info("checkpoint step %d was stored in another layer layout; converted", step)
          out = (out[0], convert(out[1])) + out[2:]
        return out
      if error is None:  # readable here but not on another process: unreadable for the run
        error = RuntimeError("unreadable on another process")
      if self._read_only:
        logging.warning("checkpoint step %d in %s cannot be read (%s: %s); skipping it (read-only: "
                        "nothing moved) and trying the previous one", step, self.directory,
                        type(error).__name__, error)
        continue
      dst = self._quarantine(step)
      logging.warning("checkpoint step %d in %s cannot be read (%s: %s); moved it to %s and "
                      "falling back to the previous one", step, self.directory,
                      type(error).__name__, error, dst)
    return None

  @property
  def _read_only(self) -> bool:
    return bool(self._opts["read_only"])

  @staticmethod
  def _agree_unreadable(unreadable: bool) -> bool:
    """Every process takes the same decision: a step unreadable on one is unreadable for all."""
    if jax.process_count() == 1:
      return unreadable
    flags = multihost_utils.process_allgather(np.asarray(unreadable, np.int32))
    return bool(np.any(flags))

  def _quarantine(self, step: int):
    """Moves an unreadable step aside (process 0) and reopens the manager. Returns the target."""
    assert not self._read_only, "read-only checkpointers never move anything"
    src = self.directory / str(step)
    dst = self.directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
    if jax.process_index() == 0 and src.exists():
      dst.parent.mkdir(parents=True, exist_ok=True)
      if files.is_remote(src):  # object stores have no directory rename: copy, then delete
        _copy_tree(src, dst)
        src.rmtree()
      else:
        files.replace(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self.mngr.close()
    self._open()
    return dst


def _copy_tree(src: epath.Path, dst: epath.Path):
  """Recursive copy through epath (object stores), file by file."""
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      _copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name, overwrite=True)


def gather_process_states(state: Any) -> dict:
  """{"process_count": n, "processes": [JSON state of process 0, ..., of process n - 1]}.

  Every process gets the same dict. On several processes this is two all-gathers (lengths, then
  the UTF-8 bytes padded to the longest), so every process must call it at the same point, as a
  checkpoint save is anyway.
  """
  n = jax.process_count()
  if n == 1:
    return {"process_count": 1, "processes": [state]}
  blob = np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.asarray(len(blob), np.int32)))
  padded = np.zeros((int(lengths.max()),), np.uint8)
  padded[:len(blob)] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded))
  return {"process_count": n,
          "processes": [json.loads(bytes(blobs[i, :lengths[i]]).decode("utf-8")) for i in range(n)]}


def restore_for_training(ckpt: Checkpointer, abstract_state: Any, resume: str = "",
                         check: Optional[MetaCheck] = None,
                         adapt: Optional[LayoutAdapter] = None):
  """The resume order of both trainers: this run's checkpoints -> `resume` -> None (scratch).

  `resume` is another run's workdir (its `checkpoints/` is used) or a checkpoint directory; it is
  only read (read-only checkpointer). `check(meta, own_run)` compares stored configs (own_run is
  False for `resume`); `adapt`: see `Checkpointer.restore_latest`. Returns (step, state, meta,
  data_state) or None.

  Raises:
    IncompatibleCheckpointError: a checkpoint of another configuration or state structure.
    CheckpointRestoreError: `resume` holds no readable checkpoint.
  """
  wd = ckpt.directory.parent
  restored = ckpt.restore_latest(
      abstract_state, check, own_run=True, adapt=adapt,
      hint=f" Rerun with that run's settings, move {ckpt.directory} away yourself, or train in a "
           f"new --workdir (--config.resume={wd} starts from these weights if the model is the "
           "same).")
  if restored is None and resume:
    resume = files.absolute(resume)
    src = files.join(resume, "checkpoints")
    src = src if files.isdir(src) else resume
    ro = Checkpointer(src, save_every=1, read_only=True)
    steps = ro.all_steps()
    if not steps:
      raise CheckpointRestoreError(f"config.resume={resume!r}: no checkpoint in {src}")
    restored = ro.restore_latest(
        abstract_state, check, own_run=False, adapt=adapt,
        hint=" config.resume must name a run of the same model.")
    if restored is None:
      raise CheckpointRestoreError(
          f"config.resume={resume!r}: none of the steps {steps} in {src} can be read (see the "
          "warnings above); nothing was moved")
    logging.info("resuming from config.resume=%s: step %d", src, restored[0])
  return restored


def read_meta(directory: str, step: Optional[int] = None) -> dict:
  """The JSON metadata of a step (latest by default) without touching the arrays."""
  ck = Checkpointer(directory, save_every=1, read_only=True)
  step = ck.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  return ck.read_step_meta(step)
