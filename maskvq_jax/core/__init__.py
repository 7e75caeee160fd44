"""Shared infrastructure, one module per concern; no model or stage code lives here.

  cli.py            how entry points report user mistakes: `error: ...`, exit 2, no traceback.
  files.py          the path helper for every user-given location, local or URL (gs://...):
                    join, glob, makedirs, open, atomic writes of text / PNG / npz, staging.
  progress.py       console progress with throughput and ETA: passes and training steps.
  sharding.py       the one place for meshes and logical-axis rules.
  checkpointing.py  Orbax checkpoints: save, restore, resume order, quarantine of broken steps.
  resume_guard.py   which config fields a resumed run may change (stored config vs this run's).
  workdir_lock.py   one trainer per workdir: lock file with holder, heartbeat, stale takeover.
  writers.py        TensorBoard / console metric writers, image grids, parameter overview.
  loop.py           the trainers' shared loop: step counts, schedules, cadence, preemption,
                    NaN guard, restore-or-init.
"""
