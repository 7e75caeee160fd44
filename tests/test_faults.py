"""Faults a long run meets: SIGKILL mid-run, a full disk, a workdir that cannot hold checkpoints.

Covered elsewhere (not repeated here): SIGTERM -> save and clean exit
(test_train_smoke.test_sigterm_saves_current_step_and_exits_cleanly), NaN losses
(test_train_smoke.test_nan_in_loss_stops_without_checkpointing_bad_state), corrupt or partial
latest checkpoints (test_checkpointing.test_corrupt_latest_checkpoint_falls_back_to_previous,
test_partial_checkpoint_is_ignored), and a multi-process SIGKILL + restart (test_multiprocess).
"""
import errno
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from maskvq_jax.core import checkpointing
from maskvq_jax.core import workdir_lock
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path

enable_compile_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 1000


def _main(workdir, *flags):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  cmd = [sys.executable, "-m", "maskvq_jax.main", "--config",
         f"configs/quickstart.py:tiny,perceptual=0,steps={TOTAL}", "--config.ckpt_every_steps=2",
         "--workdir", str(workdir), *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_kill_9_mid_run_then_restart_matches_uninterrupted_run(tmp_path):
  proc = _main(tmp_path / "killed")
  deadline = time.time() + 600
  while not (tmp_path / "killed" / "checkpoints" / "2").is_dir():  # committed (renamed) step 2
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "no checkpoint within 10 min"
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)  # no handler, no flush: whatever was in flight is lost
  proc.wait()
  last = checkpointing.Checkpointer(str(tmp_path / "killed" / "checkpoints"), save_every=1,
                                    read_only=True).latest_step()
  assert last is not None and last >= 2
  # SIGKILL left the workdir's lock behind: refused (naming the dead pid), taken over on request
  with pytest.raises(workdir_lock.WorkdirLockError,
                     match=rf"stale lock from pid {proc.pid} on host .*: process {proc.pid} is "
                           r"not running on this host\. .* --config.takeover_lock=True"):
    trainer.train(tiny(f"steps={TOTAL}", ckpt_every_steps=2, run_steps=2), str(tmp_path / "killed"))
  resumed = trainer.train(tiny(f"steps={TOTAL}", ckpt_every_steps=2, run_steps=2,
                               takeover_lock=True), str(tmp_path / "killed"))
  assert not (tmp_path / "killed" / "workdir.lock").exists()
  assert (resumed["first_step"], resumed["last_step"]) == (last, last + 2)
  straight = trainer.train(tiny(f"steps={TOTAL}", ckpt_every_steps=2, run_steps=last + 2),
                           str(tmp_path / "straight"))
  assert _leaves_equal(straight["state"], resumed["state"])  # bitwise, data order included
  assert straight["train"] == resumed["train"]


def test_disk_full_stops_with_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  c = tiny("steps=4", ckpt_every_steps=2)
  first = trainer.train(tiny("steps=4", ckpt_every_steps=2, run_steps=2), str(tmp_path))
  assert first["last_step"] == 2
  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *a, **k):
    if step > 2:
      raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  ckdir = os.path.join(str(tmp_path), "checkpoints")
  with pytest.raises(checkpointing.CheckpointWriteError) as e:
    trainer.train(c, str(tmp_path))
  msg = str(e.value)
  assert f"cannot write checkpoint step 4 to {ckdir}" in msg
  assert "No space left on device" in msg and "latest committed step: 2" in msg
  # Earlier checkpoints still restore; freeing the disk and rerunning resumes from them.
  assert checkpointing.read_meta(ckdir)["step"] == 2
  monkeypatch.undo()
  again = trainer.train(c, str(tmp_path))
  assert (again["first_step"], again["last_step"]) == (2, 4)


def test_checkpoint_path_blocked_by_a_file_fails_clearly_and_touches_nothing(tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory\n")  # e.g. a botched copy / mount
  proc = _main(tmp_path)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 1, err[-3000:]
  assert f"training stopped: cannot open checkpoint directory {tmp_path}/checkpoints" in err
  assert (tmp_path / "checkpoints").read_text() == "not a directory\n"
