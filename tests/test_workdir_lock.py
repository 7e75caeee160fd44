"""The workdir lock: one trainer per workdir, holder named, stale locks reported and taken over.

Multi-process runs (one lock, process 0's) are covered by test_multiprocess; the trainers' release
after a normal run and after an error by test_resume_guard.
"""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from maskvq_jax.core import workdir_lock
from maskvq_jax.stage1 import trainer
from stage1_testlib import tiny  # tests/ is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()


def _dead_pid() -> int:
  p = subprocess.Popen(["true"])
  p.wait()
  return p.pid


def _write_lock(workdir, **fields):
  now = time.time()
  info = dict(host=HOST, pid=_dead_pid(), proc_start=None, start_time=now - 100, heartbeat=now,
              token="theirs", command="python -m maskvq_jax.main ...")
  info.update(fields)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "workdir.lock"), "w") as f:
    json.dump(info, f)
  return info


def _read_lock(workdir) -> dict:
  with open(os.path.join(workdir, "workdir.lock")) as f:
    return json.load(f)


def test_acquire_writes_owner_and_release_removes_it(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path / "wd")).acquire()
  info = _read_lock(tmp_path / "wd")
  assert (info["host"], info["pid"], info["token"]) == (HOST, os.getpid(), lock.token)
  assert abs(info["start_time"] - time.time()) < 60 and info["heartbeat"] >= info["start_time"]
  lock.release()
  assert not (tmp_path / "wd").exists()  # no lock, no temporary files, not the folder it made
  (tmp_path / "a").mkdir()  # an existing folder stays, folders the lock made for nothing do not
  workdir_lock.WorkdirLock(str(tmp_path / "a" / "b" / "wd")).acquire().release()
  assert os.listdir(tmp_path / "a") == []
  lock = workdir_lock.WorkdirLock(str(tmp_path / "a" / "c")).acquire()
  (tmp_path / "a" / "c" / "ckpt").write_text("x")  # the run wrote something: all kept
  lock.release()
  assert os.listdir(tmp_path / "a" / "c") == ["ckpt"]


def test_second_trainer_is_refused_at_once_naming_host_and_pid(tmp_path):
  wd = str(tmp_path / "wd")
  with workdir_lock.hold(wd, timeout_s=600):
    t = time.time()
    with pytest.raises(workdir_lock.WorkdirLockError,
                       match=rf"workdir {wd} is in use by pid {os.getpid()} on host {HOST} "
                             r"\(started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d.*, last heartbeat \d+ s ago"):
      trainer.train(tiny("steps=2"), wd)
    assert time.time() - t < 30  # before building or compiling anything
    # even the takeover flag does not take a live lock
    with pytest.raises(workdir_lock.WorkdirLockError, match="is in use by"):
      trainer.train(tiny("steps=2", takeover_lock=True), wd)
    assert sorted(os.listdir(wd)) == ["workdir.lock"]  # nothing else written
  assert not os.path.exists(wd)  # the lock made it, nothing was written into it


def test_second_trainer_cli_one_error_line_exit_2(tmp_path):
  wd = str(tmp_path / "wd")
  with workdir_lock.hold(wd):
    proc = subprocess.run(
        [sys.executable, "-m", "maskvq_jax.main", "--config",
         "configs/quickstart.py:tiny,perceptual=0,steps=2", "--workdir", wd],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=600)
    holder = _read_lock(wd)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr
  assert errors[0].startswith(f"error: workdir {wd} is in use by pid {os.getpid()} on host {HOST} "
                              f"(started {workdir_lock._when(holder['start_time'])}")  # pylint: disable=protected-access
  assert errors[0].endswith("Stop that run first, or use another --workdir")


def test_stale_lock_of_a_dead_pid_is_reported_and_taken_over_with_the_flag(tmp_path, caplog):
  wd = str(tmp_path / "wd")
  old = _write_lock(wd)
  with pytest.raises(workdir_lock.WorkdirLockError,
                     match=rf"workdir {wd} has a stale lock from pid {old['pid']} on host {HOST} "
                           rf".*: process {old['pid']} is not running on this host\. If no trainer "
                           r"uses this workdir, rerun with --config.takeover_lock=True"):
    workdir_lock.WorkdirLock(wd).acquire()
  assert _read_lock(wd) == old  # untouched without the flag
  with caplog.at_level(logging.WARNING):
    lock = workdir_lock.WorkdirLock(wd, takeover=True).acquire()
  assert f"taking over the stale lock of pid {old['pid']} on host {HOST}" in caplog.text
  assert "is not running on this host" in caplog.text
  assert _read_lock(wd)["token"] == lock.token and _read_lock(wd)["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(os.path.join(wd, "workdir.lock"))


def test_stale_by_heartbeat_timeout_on_another_host(tmp_path):
  wd = str(tmp_path / "wd")
  _write_lock(wd, host="other-host", pid=12345, heartbeat=time.time() - 30)
  with pytest.raises(workdir_lock.WorkdirLockError, match="is in use by pid 12345 on host other-host"):
    workdir_lock.WorkdirLock(wd, takeover=True, timeout_s=600).acquire()  # live: 30 s < 600 s
  with pytest.raises(workdir_lock.WorkdirLockError,
                     match=r"stale lock .*: no heartbeat for (29|30|31) s \(lock_timeout_s=20\)"):
    workdir_lock.WorkdirLock(wd, timeout_s=20).acquire()
  lock = workdir_lock.WorkdirLock(wd, takeover=True, timeout_s=20).acquire()
  lock.release()


def test_reused_pid_and_own_pid_are_stale():
  now = time.time()
  assert workdir_lock.stale_reason(dict(host=HOST, pid=os.getpid(), token="x", heartbeat=now),
                                   now, 600).startswith(f"pid {os.getpid()} is this process")
  parent = os.getppid()
  info = dict(host=HOST, pid=parent, proc_start=-1, token="x", heartbeat=now)
  if workdir_lock._proc_start(parent) is not None:  # pylint: disable=protected-access
    assert workdir_lock.stale_reason(info, now, 600) == f"pid {parent} now belongs to another process"
  info["proc_start"] = workdir_lock._proc_start(parent)  # pylint: disable=protected-access
  assert workdir_lock.stale_reason(info, now, 600) is None
  assert workdir_lock.stale_reason(None, now, 600) == "the lock file cannot be read"


_HOLDER = """
import sys, time
from maskvq_jax.core import workdir_lock
try:
  with workdir_lock.hold(sys.argv[1], timeout_s=0.4) as lock:  # heartbeat every 0.1 s
    print("held", flush=True)
    time.sleep(60)
except workdir_lock.WorkdirLockError as e:
  print("stopped:", e, flush=True)
  sys.exit(3)
"""


def test_heartbeat_refreshes_and_a_takeover_stops_the_holder(tmp_path):
  """In a fresh interpreter, as a trainer runs: the pytest process's signal state after hundreds
  of other tests is not what the interrupt of the main thread is meant for."""
  wd = str(tmp_path / "wd")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [str(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
       os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, wd], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
  try:
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    first = _read_lock(wd)["heartbeat"]
    deadline = time.time() + 20
    while _read_lock(wd)["heartbeat"] == first:  # the heartbeat refreshes
      assert time.time() < deadline
      time.sleep(0.02)
    _write_lock(wd, host="other-host", pid=4242, token="newer")  # another run took it over
    out, err = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == 3, err[-3000:]
  assert re.search(r"^stopped: the lock of workdir .* was taken over by pid 4242 on host "
                   r"other-host .*this run stopped", out, re.M), out
  assert _read_lock(wd)["token"] == "newer"  # the new holder's lock is kept


def test_unreadable_lock_is_stale_and_can_be_taken_over(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "workdir.lock").write_text("{garbage")
  with pytest.raises(workdir_lock.WorkdirLockError, match="the lock file cannot be read"):
    workdir_lock.WorkdirLock(str(wd)).acquire()
  workdir_lock.WorkdirLock(str(wd), takeover=True).acquire().release()
  assert os.listdir(wd) == []


def test_object_store_path_through_epath(tmp_path, monkeypatch):
  """The URL code path (no hard links: write, pause, read back), run on a local directory."""
  monkeypatch.setattr(workdir_lock.files, "is_remote", lambda p: True)
  monkeypatch.setattr(workdir_lock.files, "absolute", str)
  wd = str(tmp_path / "wd")
  a = workdir_lock.WorkdirLock(wd, settle_s=0.0)
  assert a.remote
  a.acquire()
  with pytest.raises(workdir_lock.WorkdirLockError, match=f"is in use by pid {os.getpid()}"):
    workdir_lock.WorkdirLock(wd, settle_s=0.0).acquire()
  a.heartbeat()
  a.release()
  assert os.listdir(wd) == []


class _TookTheLock(Exception):
  pass


class _LockingTrainer:
  """Stands in for a trainer: takes the workdir lock exactly as the real ones do, then stops."""

  def __init__(self):
    self.workdirs = []

  def train(self, config, workdir):
    with workdir_lock.hold(workdir, config):
      self.workdirs.append(workdir)
    raise _TookTheLock


@pytest.mark.parametrize("tool", ["quickstart", "repro_small"])
def test_tools_name_their_own_takeover_flag_and_take_a_stale_lock_with_it(tool, tmp_path,
                                                                           monkeypatch, capsys):
  """A killed quickstart / reproduction leaves a stale lock: the rerun says `--takeover_lock`
  (the tool's flag, not the trainer's `--config.takeover_lock=True`), and that flag takes it."""
  import types  # pylint: disable=import-outside-toplevel
  from maskvq_jax import trainers  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import build  # pylint: disable=import-outside-toplevel
  from maskvq_jax.tools import quickstart, repro_small  # pylint: disable=import-outside-toplevel
  fake = _LockingTrainer()
  monkeypatch.setattr(trainers, "get", lambda name: fake)
  if tool == "quickstart":
    main, argv, wd = quickstart.main, ["--workdir", str(tmp_path), "--tiny"], tmp_path / "stage1"
  else:  # the dataset step is not what is tested here
    splits = {"validation": types.SimpleNamespace(num_examples=8)}
    monkeypatch.setattr(build, "prepare", lambda name, data_dir: types.SimpleNamespace(
        info=types.SimpleNamespace(splits=splits)))
    main, argv = repro_small.main, ["--root", str(tmp_path), "--tiny"]
    wd = tmp_path / "stage1" / repro_small.STAGE1[0][0]
  old = _write_lock(str(wd))
  assert main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
  err = [line for line in lines if line.startswith("error:")]
  assert len(err) == 1 and err[0] == lines[-1] and err[0].startswith(f"error: workdir {wd} has a stale lock from pid "
                                             f"{old['pid']} on host {HOST}"), err
  assert err[0].endswith("process {} is not running on this host. If no trainer uses this "
                         "workdir, rerun with --takeover_lock to take it over".format(old["pid"]))
  assert _read_lock(str(wd)) == old and fake.workdirs == []
  with pytest.raises(_TookTheLock):
    main(argv + ["--takeover_lock"])
  assert fake.workdirs == [str(wd)] and not os.path.exists(wd / "workdir.lock")
