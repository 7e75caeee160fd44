"""Shared infrastructure, one module per concern; no model or stage code lives here.

  files.py          local or URL (gs://...) paths: atomic writes of text, PNG, npz.
  progress.py       console progress bar with throughput and ETA (process 0).
  sharding.py       the one place for meshes and logical-axis rules.
  checkpointing.py  Orbax checkpoints: save, restore, resume order, quarantine of broken steps.
  resume_guard.py   which config fields a resumed run may change (stored config vs this run's).
  workdir_lock.py   one trainer per workdir: lock file with holder, heartbeat, stale takeover.
  writers.py        TensorBoard / console metric writers, image grids, parameter overview.
  loop.py           the trainers' shared loop: step counts, schedules, cadence, preemption,
                    NaN guard, restore-or-init.
"""
