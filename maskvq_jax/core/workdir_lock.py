"""One trainer per workdir: a lock file `<workdir>/workdir.lock` naming its holder.

Why: two trainers started on one workdir would both run and overwrite each other's checkpoints.
`hold(workdir, config)` wraps a whole training run:
  * free workdir -> the lock is created (owner JSON: host, pid, process start time, start time,
    heartbeat, a random token, command line) and removed again when the run ends in any way
    short of SIGKILL / power loss (clean finish, preemption, exception);
  * held by a live run -> `WorkdirLockError` at once, naming host, pid and start time;
  * stale (the holder's pid is not running on this host, the pid now belongs to another process,
    or no heartbeat for `config.lock_timeout_s` seconds) -> `WorkdirLockError` saying why, unless
    `config.takeover_lock` is set: then the takeover is logged and the lock is taken.
`lock_timeout_s <= 0` disables the time rule (only a dead pid on this host is stale). Heartbeat
times are compared across hosts, so clocks must roughly agree (minutes, not the timeout).

Heartbeats come from a daemon thread every min(60 s, lock_timeout_s / 4), not from the training
loop: long compilations, evaluations or checkpoint waits must not make a live run look stale,
and a run that is alive but stuck keeps the workdir (stop it to free it). Each heartbeat first
checks that the lock still carries this run's token; if another run took it over (it judged this
one stale), this run is interrupted in its main thread and `hold` raises `WorkdirLockError`, so
that two trainers never keep writing one workdir.

Multi-host runs take ONE lock: process 0 creates, heartbeats and removes it; the outcome is
broadcast so every process starts or every process raises. Workdirs may be URLs (gs://...): the
file goes through etils.epath. Locally creation is atomic (hard link of a complete temporary
file, O_EXCL where links are unsupported); object stores have no create-if-absent, so there the
writer reads the lock back after a pause and only the token that survived owns it (the heartbeat
check catches what that pause misses).
"""
import _thread
import signal
import contextlib
import json
import os
import socket
import sys
import threading
import time
from typing import Optional
import uuid

from absl import logging
from etils import epath

from maskvq_jax.core import files

LOCK_NAME = "workdir.lock"
DEFAULT_TIMEOUT_S = 600.0
_ACTIVE_TOKENS: set = set()  # tokens of the locks this process holds


class WorkdirLockError(RuntimeError):
  """The workdir is in use, its lock is stale, cannot be written, or was lost."""


TAKEOVER_FLAG = "--config.takeover_lock=True"  # what the stale-lock message tells the user to add


def with_takeover_flag(err: WorkdirLockError, flag: str) -> str:
  """`err`'s message for a command whose takeover flag is `flag` (e.g. a tool's --takeover_lock)."""
  return str(err).replace(TAKEOVER_FLAG, flag)


# ===================================================================== holder facts
def _proc_start(pid: int) -> Optional[int]:
  """The process's start time in clock ticks since boot (Linux /proc), to tell reused pids apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, counted after "(comm)"
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  except OSError:
    return False
  return True


def _when(t) -> str:
  if not isinstance(t, (int, float)):
    return "?"
  return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def describe(info: Optional[dict], now: Optional[float] = None) -> str:
  """'pid 123 on host h (started ..., last heartbeat 12 s ago; command: ...)'."""
  if not info:
    return "an unknown holder (the lock file cannot be read)"
  now = time.time() if now is None else now
  hb = info.get("heartbeat")
  age = f"{now - hb:.0f} s ago" if isinstance(hb, (int, float)) else "never"
  cmd = f"; command: {info['command']}" if info.get("command") else ""
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started "
          f"{_when(info.get('start_time'))}, last heartbeat {age}{cmd})")


def stale_reason(info: Optional[dict], now: float, timeout_s: float) -> Optional[str]:
  """Why the lock `info` is stale, or None while its holder may be alive."""
  if not info:
    return "the lock file cannot be read"
  if info.get("token") in _ACTIVE_TOKENS:
    return None
  pid = info.get("pid")
  if info.get("host") == socket.gethostname() and isinstance(pid, int):
    if pid == os.getpid():
      return (f"pid {pid} is this process, which does not hold the lock (an earlier run with the "
              "same pid, e.g. in a restarted container)")
    if not _pid_alive(pid):
      return f"process {pid} is not running on this host"
    held, now_start = info.get("proc_start"), _proc_start(pid)
    if held is not None and now_start is not None and held != now_start:
      return f"pid {pid} now belongs to another process"
  hb = info.get("heartbeat")
  if not isinstance(hb, (int, float)):
    return "the lock has no heartbeat time"
  if timeout_s > 0 and now - hb > timeout_s:
    return f"no heartbeat for {now - hb:.0f} s (lock_timeout_s={timeout_s:g})"
  return None


# ===================================================================== the lock
class WorkdirLock:
  """The lock of one workdir; `acquire`, then `release` (heartbeats run in between)."""

  def __init__(self, workdir, *, takeover: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
               heartbeat_s: Optional[float] = None, settle_s: float = 1.0):
    self.workdir = files.absolute(workdir)
    self.path = epath.Path(self.workdir) / LOCK_NAME
    self.remote = files.is_remote(self.workdir)
    self.takeover, self.timeout_s = bool(takeover), float(timeout_s)
    self.heartbeat_s = heartbeat_s or max(min(60.0, self.timeout_s / 4 if self.timeout_s > 0
                                              else 60.0), 0.05)
    self.settle_s = settle_s  # object stores: pause before reading a new lock back
    self.token = uuid.uuid4().hex
    self.lost: Optional[str] = None
    self._created_dirs: list = []
    self._held = False
    self._io = threading.Lock()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # -- file I/O --------------------------------------------------------------------------------
  def _owner(self) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "start_time": now, "heartbeat": now, "started": _when(now), "token": self.token,
            "command": " ".join(sys.argv)[:300]}

  def read(self) -> tuple[bool, Optional[dict]]:
    """(exists, owner JSON or None if unreadable)."""
    for attempt in range(3):
      try:
        text = self.path.read_text()
      except FileNotFoundError:
        return False, None
      try:
        info = json.loads(text)
        return True, info if isinstance(info, dict) else None
      except ValueError:  # O_EXCL fallback: created, not yet written
        if attempt < 2:
          time.sleep(0.1)
    return True, None

  def _create(self, info: dict) -> bool:
    """Creates the lock file with `info` if it does not exist; True if this run owns it now."""
    text = json.dumps(info, indent=1)
    if self.remote:
      if self.path.exists():
        return False
      self.path.write_text(text)
      time.sleep(self.settle_s)
      _, back = self.read()
      return bool(back) and back.get("token") == self.token
    path = os.fspath(self.path)
    tmp = os.path.join(os.path.dirname(path), f".{LOCK_NAME}.{self.token}.tmp")
    with open(tmp, "w") as f:
      f.write(text)
    try:
      os.link(tmp, path)  # atomic, fails if the lock exists, and the content is complete
      return True
    except FileExistsError:
      return False
    except OSError:  # no hard links on this filesystem
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    finally:
      os.unlink(tmp)

  def _write(self, info: dict):
    text = json.dumps(info, indent=1)
    if self.remote:
      self.path.write_text(text)
      return
    path = os.fspath(self.path)
    tmp = os.path.join(os.path.dirname(path), f".{LOCK_NAME}.{self.token}.tmp")
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)

  def _remove_if(self, token) -> None:
    exists, info = self.read()
    if exists and (info or {}).get("token") == token:
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass

  # -- acquire / heartbeat / release -----------------------------------------------------------
  def acquire(self) -> "WorkdirLock":
    try:
      # the local folders this lock creates are removed again if the run leaves them empty (a
      # config error found after locking): a mistake writes nothing
      d = self.path.parent
      while not self.remote and not d.exists() and d != d.parent:
        self._created_dirs.append(d)  # leaf first
        d = d.parent
      self.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise WorkdirLockError(f"cannot create workdir {self.workdir} ({type(e).__name__}: {e})") from e
    for _ in range(5):
      try:
        if self._create(self._owner()):
          break
      except OSError as e:
        raise WorkdirLockError(f"cannot write the lock file {self.path} ({type(e).__name__}: "
                               f"{e}); is the workdir writable?") from e
      exists, info = self.read()
      if not exists:  # released in between: try again
        continue
      reason = stale_reason(info, time.time(), self.timeout_s)
      if reason is None:
        raise WorkdirLockError(
            f"workdir {self.workdir} is in use by {describe(info)}; lock file {self.path}. Stop "
            "that run first, or use another --workdir")
      if not self.takeover:
        raise WorkdirLockError(
            f"workdir {self.workdir} has a stale lock from {describe(info)}: {reason}. If no "
            f"trainer uses this workdir, rerun with {TAKEOVER_FLAG} to take it over")
      logging.warning("workdir %s: taking over the stale lock of %s (%s)", self.workdir,
                      describe(info), reason)
      self._remove_if((info or {}).get("token"))
      if info is None:  # unreadable: no token to match
        self.path.unlink(missing_ok=True)
    else:
      raise WorkdirLockError(f"could not take the lock {self.path}: other trainers keep "
                             "creating it")
    _ACTIVE_TOKENS.add(self.token)
    self._held = True
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
    self._thread.start()
    logging.info("workdir %s locked (%s)", self.workdir, self.path)
    return self

  def heartbeat(self):
    """Rewrites the heartbeat time; WorkdirLockError if another run owns the lock now."""
    with self._io:
      exists, info = self.read()
      if not exists:  # removed by hand: take it again if nobody else did
        if self._create(self._owner()):
          logging.warning("the lock file %s had disappeared; created it again", self.path)
          return
        exists, info = self.read()
      if (info or {}).get("token") != self.token:
        raise WorkdirLockError(
            f"the lock of workdir {self.workdir} was taken over by {describe(info)}; this run "
            "stopped so that two trainers do not write one workdir")
      info["heartbeat"] = time.time()
      self._write(info)

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      try:
        self.heartbeat()
      except WorkdirLockError as e:
        self.lost = str(e)
        logging.error("%s", e)
        if self._held:
          _stop_main_thread()
        return
      except Exception as e:  # pylint: disable=broad-except  # storage hiccup: try next time
        logging.warning("could not refresh the workdir lock %s (%s: %s)", self.path,
                        type(e).__name__, e)

  def release(self):
    """Stops the heartbeat and removes the lock file if it is still this run's."""
    self._held = False
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    _ACTIVE_TOKENS.discard(self.token)
    if self.lost is None:
      with self._io:
        try:
          self._remove_if(self.token)
        except OSError as e:
          logging.warning("could not remove the workdir lock %s (%s)", self.path, e)
    for d in self._created_dirs:  # the folders acquire created, leaf first, while empty
      try:
        d.rmdir()
      except (OSError, ValueError):  # not empty (epath says so with a ValueError)
        break


# The heartbeat thread stops a holder whose lock was taken over with this signal, sent to the main
# thread, whose handler `hold` installs: SIGINT cannot be relied on (a job started in the
# background of a non-interactive shell, or under nohup / some schedulers, ignores it, and
# `_thread.interrupt_main` then does nothing), and a real signal also interrupts a blocked wait.
STOP_SIGNAL = signal.SIGUSR2


class _LockLostInterrupt(KeyboardInterrupt):
  """Raised in the main thread by STOP_SIGNAL; `hold` turns it into WorkdirLockError."""


def _on_stop_signal(signum, frame):
  del signum, frame
  raise _LockLostInterrupt()


def _stop_main_thread():
  """Interrupts the main thread (see STOP_SIGNAL); without the handler, `interrupt_main`."""
  if signal.getsignal(STOP_SIGNAL) is _on_stop_signal:  # installed by `hold`
    try:
      signal.pthread_kill(threading.main_thread().ident, STOP_SIGNAL)
      return
    except (AttributeError, OSError, ValueError):
      pass
  _thread.interrupt_main()


@contextlib.contextmanager
def hold(workdir, config=None, *, takeover: Optional[bool] = None,
         timeout_s: Optional[float] = None):
  """Holds `workdir`'s lock for the block (process 0 of a multi-host run; all agree).

  `takeover` / `timeout_s` default to `config.takeover_lock` / `config.lock_timeout_s`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  cfg = config if config is not None else {}
  takeover = bool(cfg.get("takeover_lock", False)) if takeover is None else takeover
  timeout_s = float(cfg.get("lock_timeout_s", DEFAULT_TIMEOUT_S)) if timeout_s is None else timeout_s
  lock, err = None, ""
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir, takeover=takeover, timeout_s=timeout_s)
    try:
      lock.acquire()
    except WorkdirLockError as e:
      lock, err = None, str(e)
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(0 if err else 1)))
    if not ok and jax.process_index() != 0:
      try:
        _, info = WorkdirLock(workdir).read()
      except OSError:
        info = None
      err = (f"process 0 could not lock workdir {files.absolute(workdir)} (see its error); "
             f"the lock names {describe(info)}")
  if err:
    raise WorkdirLockError(err)
  previous = None
  if lock is not None and threading.current_thread() is threading.main_thread():
    previous = signal.signal(STOP_SIGNAL, _on_stop_signal)
  try:
    yield lock
  except BaseException as e:  # pylint: disable=broad-except
    if lock is not None and lock.lost:
      raise WorkdirLockError(lock.lost) from e
    raise
  finally:
    if lock is not None:
      lock.release()
    if previous is not None:
      signal.signal(STOP_SIGNAL, previous)
