"""Orbax checkpointing for all trainers: one manager, one restore policy.

Each step directory holds three items: `state` (the sharded train state, StandardSave), `meta`
(config + run metadata, JSON) and `data` (the input iterators' positions, JSON). Every process
reads its own share of the data, so each has its own position: `gather_process_states` collects
them all into the `data` item (written by the primary process), and each process picks its own on
restore (`data.pipeline.restore_position`). Saves are async
(the device->host copy happens before `save` returns, so the trainer may donate the state right
after). Restores reshard onto whatever mesh the abstract target carries.

Robustness: `restore_latest` walks the steps newest-first; a step that fails to restore (partial
or corrupt files) is logged, moved aside into `<dir>/../corrupt_checkpoints/` so later saves of the
same step number do not collide, and the previous step is tried. Uncommitted (tmp) saves are never
listed by Orbax in the first place. A save that cannot be written (disk full, read-only or
misplaced directory) raises `CheckpointWriteError` naming the directory and the last committed
step; Orbax commits a step by renaming its tmp directory, so earlier steps are never touched.
"""
import json
import os
import shutil
import time
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; earlier committed steps are intact."""


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with keep-last-N + keep-every-M and fallbacks."""

  def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 3,
               keep_every: Optional[int] = None, async_save: bool = True, read_only: bool = False):
    self.directory = epath.Path(directory)
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

  def restore_latest(self, abstract_state: Any):
    """Newest restorable step: (step, state, meta, data_state), or None if there is none."""
    for step in reversed(self.all_steps()):
      try:
        return (step,) + self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  # any unreadable step -> fall back
        logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); falling back to "
                        "the previous one", step, self.directory, type(e).__name__, e)
        self._quarantine(step)
    return None

  def _quarantine(self, step: int):
    """Moves an unreadable step aside (process 0) and reopens the manager."""
    src = self.directory / str(step)
    if jax.process_index() == 0 and src.exists():
      dst = self.directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
      dst.parent.mkdir(parents=True, exist_ok=True)
      if "://" in str(src):  # object stores cannot rename directories cheaply: delete instead
        src.rmtree()
      else:
        shutil.move(os.fspath(src), os.fspath(dst))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self.mngr.close()
    self._open()


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


def restore_for_training(ckpt: Checkpointer, abstract_state: Any, resume: str = ""):
  """The resume order of both trainers: this run's checkpoints -> `resume` -> None (scratch).

  `resume` is another run's workdir (its `checkpoints/` is used) or a checkpoint directory; it is
  only read. Returns (step, state, meta, data_state) or None.
  """
  restored = ckpt.restore_latest(abstract_state)
  if restored is None and resume:
    src = os.path.join(resume, "checkpoints") if os.path.isdir(os.path.join(resume, "checkpoints")) else resume
    restored = Checkpointer(src, save_every=1, read_only=True).restore_latest(abstract_state)
    logging.info("resuming from config.resume=%s: %s", src, restored and restored[0])
  return restored


def read_meta(directory: str, step: Optional[int] = None) -> dict:
  """The JSON metadata of a step (latest by default) without touching the arrays."""
  ck = Checkpointer(directory, save_every=1, read_only=True)
  step = ck.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  return ck.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
