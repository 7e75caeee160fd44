"""Helpers of the multi-process tests: launching `launch/local_multiprocess.sh`, reading its logs
and TensorBoard events, and feeding a single-process reference what the two hosts read.

A launch is 2 processes x 4 CPU devices on loopback. Gloo's context set-up waits a fixed 30 s for
the peer; on a loaded box one process can reach its first collective later than that (it is still
importing or compiling). That is the test machine, not the code under test: such a launch is
started again (its workdir is kept, so it resumes like any restart).
"""
import glob
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOO_TIMEOUT = "Gloo context initialization failed"
RETRIES = 2
TIMEOUT = 1800  # seconds a launch may take to reach what a test waits for (a loaded 2-core box)
RUNNING: list = []  # every Launch started; the test module's fixture kills what is left


def kill_all():
  while RUNNING:
    RUNNING.pop().kill()


class Launch:
  """One `local_multiprocess.sh` job (2 processes x 4 devices), started again on a gloo time-out."""

  def __init__(self, name: str, log_root: str, args: list, *, module: str = "maskvq_jax.main",
               workdir: str = "", env: dict = None):
    self.name, self.log_root, self.args, self.module = name, log_root, list(args), module
    self.workdir, self.env, self.attempt, self.retries = workdir, env or {}, 0, RETRIES
    self.proc = None
    self._start()

  @property
  def log_dir(self) -> str:
    return os.path.join(self.log_root, f"{self.name}_{self.attempt}")

  def _start(self):
    os.makedirs(self.log_dir, exist_ok=True)
    env = dict(os.environ, WORKDIR=self.workdir or self.log_dir, NUM_PROCESSES="2",
               DEVICES_PER_PROCESS="4", LOG_DIR=self.log_dir, MODULE=self.module,
               PYTHON=sys.executable, PYTHONPATH=ROOT, **self.env)
    env.pop("XLA_FLAGS", None)  # the script sets 4 devices per process
    # No persistent compilation cache: a process that loads the step from the cache while its peer
    # still compiles it waits longer than gloo's 30 s in the first collective.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), *self.args]
    with open(os.path.join(self.log_dir, "launcher.log"), "w") as err:
      self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    RUNNING.append(self)

  def logs(self) -> list[str]:
    out = []
    for i in range(2):
      p = os.path.join(self.log_dir, f"process_{i}.log")
      out.append(open(p).read() if os.path.exists(p) else "")
    return out

  def tails(self, n: int = 3000) -> str:
    return "\n".join(f"--- process {i}:\n{log[-n:]}" for i, log in enumerate(self.logs()))

  def _restarted(self) -> bool:
    """If the job ended through a gloo time-out, starts it again and returns True."""
    if self.proc.poll() is None or not self.retries:
      return False
    if not any(GLOO_TIMEOUT in log for log in self.logs()):
      return False
    self.retries, self.attempt = self.retries - 1, self.attempt + 1
    if "--config.takeover_lock=True" not in self.args:  # the failed attempt may leave its lock
      self.args.append("--config.takeover_lock=True")
    self._start()
    return True

  def wait(self, timeout: float = TIMEOUT) -> int:
    deadline = time.time() + timeout
    while True:
      try:
        rc = self.proc.wait(max(deadline - time.time(), 1))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(f"{self.name}: still running after {timeout:.0f} s\n{self.tails()}")
      if rc == 0 or not self._restarted():
        return rc

  def wait_for(self, cond, what: str, timeout: float = TIMEOUT):
    """Polls `cond()` while the job runs (restarting it on a gloo time-out)."""
    deadline = time.time() + timeout
    while not cond():
      if self._restarted():
        continue
      assert self.proc.poll() is None, f"{self.name} ended before {what}:\n{self.tails()}"
      assert time.time() < deadline, f"{self.name}: no {what} within {timeout:.0f} s"
      time.sleep(0.2)

  def pids(self) -> list[int]:
    """The two processes' pids, in process-index order (from the launcher's message)."""
    text = open(os.path.join(self.log_dir, "launcher.log")).read()
    m = re.search(r"\(pids (\d+) (\d+)\)", text)
    assert m, text
    return [int(m.group(1)), int(m.group(2))]

  def kill(self):
    """SIGKILL to the launcher and both processes (no handler, no flush)."""
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.proc.wait()
    if self in RUNNING:
      RUNNING.remove(self)


def committed_steps(ckpt_dir: str) -> list[int]:
  """Steps Orbax has committed (it renames a step's tmp directory on commit)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def scalars(workdir: str, prefix: str) -> dict[int, dict[str, float]]:
  """step -> {tag: value} of the tags starting with `prefix` in the event files of `workdir`
  (written by process 0); a later file (a rerun of the same step) overrides an earlier one."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out: dict[int, dict[str, float]] = {}
  for f in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents*"))):
    for ev in tf.compat.v1.train.summary_iterator(f):
      for v in ev.summary.value:
        if v.tag.startswith(prefix) and not v.tensor.tensor_shape.dim:  # scalars, not images
          out.setdefault(ev.step, {})[v.tag] = float(tf.make_ndarray(v.tensor))
  return out


def assert_scalars_close(got: dict, want: dict, steps, rtol=1e-4, atol=1e-6):
  for step in steps:
    assert step in got and step in want, (step, sorted(got), sorted(want))
    assert set(want[step]) <= set(got[step]), (step, set(want[step]) - set(got[step]))
    for tag, v in want[step].items():
      np.testing.assert_allclose(got[step][tag], v, rtol=rtol, atol=atol, err_msg=f"{tag}@{step}")


def pngs(workdir: str, name: str) -> dict[int, np.ndarray]:
  """step -> uint8 image of `<workdir>/images/<name>_<step>.png`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = {}
  for p in glob.glob(os.path.join(workdir, "images", f"{name}_*.png")):
    out[int(os.path.basename(p)[len(name) + 1:-4])] = np.asarray(Image.open(p))
  return out


def assert_states_close(a, b, lr_sum):
  """Integers (step, rng) exact; floats within what reduction order can do to Adam.

  Gloo and the in-process all-reduce sum gradients in different orders; Adam's update is about
  lr * sign(g), so an element whose gradient is at rounding level may move by up to ~2 lr per
  step in the other direction (same criterion as test_train_sharding), and such elements are rare.
  """
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  diffs = []
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    if not np.issubdtype(x.dtype, np.floating):
      np.testing.assert_array_equal(x, y)
      continue
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=2.5 * lr_sum + 1e-6)
    diffs.append(np.abs(x.astype(np.float64) - y).ravel() > 1e-5)
  assert np.mean(np.concatenate(diffs)) < 1e-2


class TwoHostData:
  """What two hosts feed, for one process: host 0's local batch, then host 1's, concatenated.

  `make_iter(...)` is the real iterator constructor; it is called once per host with
  `jax.process_count() == 2` and `jax.process_index() == h`, so each builds host h's share with
  its local batch size. Equal metrics then also show that each process of a 2-process run read its
  own, disjoint share: two processes reading the same share would give other losses.
  """

  def __init__(self, make_iter, sharding, monkeypatch, *args, **kwargs):
    self.hosts = []
    for h in range(2):
      with monkeypatch.context() as m:
        m.setattr(jax, "process_count", lambda: 2)
        m.setattr(jax, "process_index", lambda h=h: h)
        self.hosts.append(make_iter(*args, **kwargs))
    self._sharding = sharding

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(h._it) for h in self.hosts]  # pylint: disable=protected-access
    return {k: jax.make_array_from_process_local_data(
        self._sharding, np.concatenate([p[k] for p in parts])) for k in parts[0]}

  def get_state(self):
    return self.hosts[0].get_state()

  def set_state(self, state):
    for h in self.hosts:
      h.set_state(state)
