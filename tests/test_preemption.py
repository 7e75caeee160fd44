"""The trainers' preemption agreement (core/loop.Preemption) in each of its three modes.

The real multi-process runs (tests/test_multiprocess.py) send SIGTERM to one process of two; here
the mode choice, the cadence of the all-gather fallback and the signal handler's lifetime are
checked in-process, with the multi-host calls replaced by recorders.
"""
import os
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np
import pytest

from maskvq_jax.core import loop


def test_single_process_flag_after_sigterm_and_handler_restored():
  before = signal.getsignal(signal.SIGTERM)
  with loop.Preemption(5, 10) as pre:
    assert pre.mode == "local" and not pre.stop(6)
    os.kill(os.getpid(), signal.SIGTERM)
    assert pre.stop(7) and pre.flag
  assert signal.getsignal(signal.SIGTERM) is before
  with pytest.raises(ValueError, match="preemption_check_every_steps=0"):
    loop.Preemption(0, 0)


def test_allgather_mode_agrees_only_every_n_steps(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(loop, "_preemption_service", lambda: False)
  calls = []

  def allgather(x):  # the other process got the signal
    calls.append(int(x))
    return np.asarray([int(x), 1])

  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  with loop.Preemption(0, 4) as pre:
    assert pre.mode == "allgather"
    assert [pre.stop(s) for s in range(1, 9)] == [False, False, False, True] * 2
  assert calls == [0, 0]  # one collective per 4 steps, none in between


def test_sync_point_mode_asks_jax_and_installs_no_handler(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(loop, "_preemption_service", lambda: True)
  asked = []
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda step: asked.append(step) or step == 13)
  before = signal.getsignal(signal.SIGTERM)
  with loop.Preemption(10, 4) as pre:
    assert pre.mode == "sync_point"
    assert signal.getsignal(signal.SIGTERM) is before  # jax.distributed's notifier keeps SIGTERM
    assert [pre.stop(s) for s in (11, 12, 13)] == [False, False, True]
  assert asked == [10, 11, 12, 13]  # the start step is announced on entering


def test_sigterm_before_the_loop_exits_143_and_removes_the_workdir_lock(tmp_path):
  """A SIGTERM while the trainer restores or compiles (before `Preemption` takes SIGTERM over)
  used to kill the process on the spot: its workdir lock stayed, and rerunning the same command
  failed with a stale-lock error until `takeover_lock` was added."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir, log = tmp_path / "run", tmp_path / "log.txt"
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile for real: the signal lands in the start-up
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskvq_jax.main", "--config",
         "configs/quickstart.py:tiny,perceptual=0,steps=50", "--config.compile_cache_dir=",
         "--workdir", str(workdir), "--alsologtostderr"],
        cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 300
    while "state shardings" not in log.read_text():  # logged before initialising and compiling
      assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
      time.sleep(0.1)
    assert (workdir / "workdir.lock").exists()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  text = log.read_text()
  assert rc == 143, (rc, text[-3000:])
  assert "outside the training loop: exiting without a new checkpoint" in text, text[-3000:]
  assert not (workdir / "workdir.lock").exists()
