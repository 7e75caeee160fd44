"""A real multi-controller run: 2 processes x 4 CPU devices through jax.distributed on loopback.

Why: the multi-host code paths (per-host data shares, cross-process collectives, multi-process
Orbax saves and restores) only run when `jax.process_count() > 1`; this test runs them for real
through `launch/local_multiprocess.sh`, kills both processes with SIGKILL after a checkpoint,
restarts them, and compares everything with a single-process 8-device run of the same config.

The single-process reference reads the data the way the two hosts do (host 0's share, then host
1's, concatenated into each global batch), so equal metrics also show that each process really
read its own, disjoint share: two processes reading the same share would give other losses.
"""
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from maskvq_jax.core import checkpointing
from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path

enable_compile_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 1000      # long enough that the first launch is still running when it is killed
CKPT_EVERY = 2
CONFIG_ARG = f"tiny,perceptual=0,steps={TOTAL}"


def _launch(workdir, *flags):
  env = dict(os.environ, WORKDIR=str(workdir), NUM_PROCESSES="2", DEVICES_PER_PROCESS="4")
  env.pop("XLA_FLAGS", None)  # the script sets 4 devices per process
  # No persistent compilation cache here: one process loading the step from the cache while the
  # other compiles it was seen to stall both in their first collective.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "--config",
         f"configs/quickstart.py:{CONFIG_ARG}", f"--config.ckpt_every_steps={CKPT_EVERY}",
         "--alsologtostderr", *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)


# Gloo's context set-up waits a fixed 30 s for the peer; on a loaded CI box one process can reach
# its first collective later than that (it is still importing or compiling). That is the test
# machine, not the code under test: such a launch is started again.
_GLOO_TIMEOUT = "Gloo context initialization failed"
_RETRIES = 2


def _gloo_timed_out(workdir) -> bool:
  return any(_GLOO_TIMEOUT in log for log in _logs(workdir))


def _logs(workdir):
  d = os.path.join(workdir, "logs", "multiprocess")
  return [open(os.path.join(d, f"process_{i}.log")).read() for i in range(2)]


def _scalars(workdir) -> dict[int, dict[str, float]]:
  """step -> {tag: value} from the TensorBoard event files process 0 wrote in `workdir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out: dict[int, dict[str, float]] = {}
  for f in sorted(os.listdir(workdir)):
    if f.startswith("events.out.tfevents"):
      for ev in tf.compat.v1.train.summary_iterator(os.path.join(workdir, f)):
        for v in ev.summary.value:
          if v.tag.startswith("train/"):
            out.setdefault(ev.step, {})[v.tag] = float(tf.make_ndarray(v.tensor))
  return out


_REAL_TRAIN_ITER = input_pipeline.train_iter


class _TwoHostData:
  """What two hosts feed, for one process: host 0's local batch, then host 1's, concatenated."""

  def __init__(self, config, sharding, monkeypatch):
    self.hosts, self.ranges = [], []
    for h in range(2):
      with monkeypatch.context() as m:
        m.setattr(jax, "process_count", lambda: 2)
        m.setattr(jax, "process_index", lambda h=h: h)
        self.hosts.append(_REAL_TRAIN_ITER(config, sharding))
        self.ranges.append(input_pipeline._host_range(config.input.num_train_examples))  # pylint: disable=protected-access
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


def _restore(workdir, step, config):
  abstract, *_ = _abstract(config)
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, read_only=True)
  return jax.device_get(ck.restore(step, abstract)[0])


def _abstract(config):
  import functools  # pylint: disable=g-import-not-at-top
  from maskvq_jax.core import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.get_rules(config.sharding_rules)
  create = functools.partial(trainer.create_state, parts=trainer.build(config))
  return sharding_lib.state_shardings(create, jax.random.PRNGKey(config.seed), mesh=mesh,
                                      rules=rules)


def _assert_states_close(a, b, lr_sum):
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


def test_two_processes_kill_restart_resume_equal_single_process(tmp_path, monkeypatch):
  mp = tmp_path / "mp"
  # ---- launch 1: train until checkpoint 2 is committed, then SIGKILL both processes
  proc, retries = _launch(mp), _RETRIES
  deadline = time.time() + 900
  while not (mp / "checkpoints" / str(CKPT_EVERY)).is_dir():  # Orbax renames on commit
    if proc.poll() is not None and retries and _gloo_timed_out(mp):
      proc, retries = _launch(mp, "--config.takeover_lock=True"), retries - 1  # it may be stale
      continue
    assert proc.poll() is None, "launch 1 died:\n" + "\n".join(l[-3000:] for l in _logs(mp))
    assert time.time() < deadline, "no checkpoint within 15 min"
    time.sleep(0.5)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  logs = _logs(mp)
  for i, log in enumerate(logs):
    assert f"process {i}/2, 4 local / 8 global devices (cpu)" in log
    assert "done:" not in log  # really killed mid-run
  saved = checkpointing.Checkpointer(str(mp / "checkpoints"), save_every=1, read_only=True)
  last = saved.latest_step()
  assert last is not None and last >= CKPT_EVERY and last % CKPT_EVERY == 0

  # ---- launch 2: restart both; they resume from `last` and train two more steps
  for attempt in range(_RETRIES + 1):
    rc = _launch(mp, "--config.run_steps=2", "--config.takeover_lock=True").wait(600)  # SIGKILLed
    if rc == 0 or attempt == _RETRIES or not _gloo_timed_out(mp):
      break
  assert rc == 0, "\n".join(l[-3000:] for l in _logs(mp))
  for log in _logs(mp):
    assert f"restored step {last}" in log and f"done: steps {last} -> {last + 2} of {TOTAL}" in log
  if attempt == 0:  # process 0 holds the one lock, left behind by the SIGKILL
    assert "taking over the stale lock" in _logs(mp)[0]
  assert not (mp / "workdir.lock").exists()

  # ---- single-process reference on all 8 local devices, fed what the two hosts read
  config = tiny(f"steps={TOTAL}", ckpt_every_steps=CKPT_EVERY, run_steps=last + 2)
  datas = []

  def two_host_iter(cfg, sharding):
    datas.append(_TwoHostData(cfg, sharding, monkeypatch))
    return datas[-1]

  monkeypatch.setattr(input_pipeline, "train_iter", two_host_iter)
  ref_dir = tmp_path / "ref"
  ref = trainer.train(config, str(ref_dir))
  assert ref["last_step"] == last + 2

  # Disjoint, equal-sized shares of the 256 training examples.
  (a0, b0), (a1, b1) = datas[0].ranges
  assert b0 - a0 == b1 - a1 == config.input.num_train_examples // 2 and b0 <= a1

  # Metrics of every step (process 0's TensorBoard events) equal the reference.
  got, want = _scalars(str(mp)), _scalars(str(ref_dir))
  assert sorted(want) == list(range(1, last + 3)) and set(want) <= set(got), (sorted(got), sorted(want))
  for step in want:
    for tag, v in want[step].items():
      np.testing.assert_allclose(got[step][tag], v, rtol=1e-4, atol=1e-6, err_msg=f"{tag}@{step}")

  # The checkpoint the killed run left, and the final one after the restart, equal the reference.
  lr = lambda n: sum(want[s]["train/lr"] for s in range(1, n + 1))
  _assert_states_close(_restore(str(mp), last, config), _restore(str(ref_dir), last, config), lr(last))
  _assert_states_close(_restore(str(mp), last + 2, config), jax.device_get(ref["state"]),
                       lr(last + 2))
