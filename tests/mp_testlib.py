"""Helpers of the multi-process tests: launching `launch/local_multiprocess.sh`, reading its logs
and TensorBoard events, feeding a single-process reference what the two hosts read, and the
rules by which the two are compared (below, "how a run is compared"; tested in test_mp_compare.py).

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
               PYTHON=sys.executable, PYTHONPATH=ROOT)
    env.update(self.env)  # e.g. DEVICES_PER_PROCESS="1"
    env.pop("XLA_FLAGS", None)  # the script sets the devices per process
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


# ---- how a run is compared with its single-process reference
#
# The two runs sum gradients in different orders (gloo between the processes, XLA inside one), so
# every float differs by rounding from the first step. In the MQ-VAE GAN step that rounding then
# grows, and none of it is a bug (BENCHMARKS.md, "GroupNorm summed per channel first"): about 320
# parameters (attention key biases, conv biases in front of a GroupNorm with one channel per
# group, the scorer's last bias) have a gradient that is exactly zero mathematically and comes out
# at 3e-10..1.3e-8, Adam's eps, so Adam moves them by up to ~1.6 lr with a sign set by rounding;
# the L1 gradient is sign(rec - x), so pixels with a near-zero residual flip with any change of
# the parameters; the adaptive weight d_weight = ||g_nll|| / (||g_gan|| + 1e-4) turns relative
# differences of those gradient norms into 10-20x larger ones per step; and later the discrete
# choices (top-k mask, codes) flip. Measured (2 processes through fsdp_tp / fsdp / dp against one
# uninterrupted 1-process run, tiny config, per-channel GroupNorm): steps 1-3 every scalar within
# 1e-6; step 4 gradient norms and d_weight 4.5e-4 apart, losses 1e-6; step 6 gradient norms
# 2e-3, losses 9e-5, eval SSIM 7e-2, Adam's first moments up to 6e-2 per leaf. That is chaos
# (x5-10 per step): which pair of runs drifts, and how far, depends on where rounding lands, and by
# step 8 nothing would be comparable. So the stage-1 test compares runs that start from the SAME
# state and run a few steps at most: the first launch against a 1-process run from step 0, each
# later launch against a 1-process run restored from the checkpoint that launch restored
# (`start`), and the whole chain's integers against the uninterrupted run (measured that way, same
# launches, two runs: every scalar within 3e-6 at every step, Adam's moments within 0.2 of their
# allowance below, the worst being rounding leaves). Stage 2 (no adaptive weight) agrees to
# 3e-7 over its whole chain and keeps one uninterrupted reference. Within a compared stretch:
#
# - its first step (same state, same batch; only the order of the sums differs): every scalar
#   within FIRST_STEP (measured: <= 2.9e-6), except the gradient norms and d_weight, within
#   FIRST_STEP_GRADIENTS. Measured 2026-12-02 on a 2-core Intel Xeon host (the AMD hosts before:
#   <= 2.9e-6), the first step after a restore: grad_norm/g_last_nll and d_weight 4.45e-4 and
#   grad_norm/g 3.9e-4 apart while every loss agreed within 2e-5 and d_weight moved exactly as
#   g_last_nll (so the GAN term's gradient agreed). The L1 term's gradient is sign(x_hat - x) / N:
#   a pixel whose reconstruction error is at rounding level flips its sign with the summation
#   order, a discrete change of the gradient that the loss does not show. Identical on the code
#   before and after this session's changes (d2aa498), so a property of the host's kernels. A
#   real bug moves these by O(1) (below);
# - every step: the scalars that are functions of the parameters and the batch (losses, codebook
#   and mask statistics, logits, parameter norms, lr) within VALUES (measured: <= 2.2e-5 even five
#   steps from the common state);
# - later steps: the scalars carrying gradient norms (GRADIENT_TAGS: grad_norm*, gan/d_weight and
#   loss/total_g, which holds d_weight x g_gan) within GRADIENTS (measured: <= 4.5e-4 even four
#   steps from it);
# - Adam's moments at its end: per leaf, ||a - b|| <= MOMENT_RTOL ||b|| + floor x sqrt(size), the
#   floor being what a gradient that is zero in exact arithmetic leaves in them (|g| <= 1.3e-8 at
#   step 1, moments up to 2e-8 apart by step 6; MU_FLOOR = 1e-7 for mu, its square for nu), so
#   those leaves, whose relative difference is O(1), count as the rounding they are, while every
#   real leaf (the smallest measured: rms of mu 5e-6, 50x the floor) is held to MOMENT_RTOL;
# - other floats of the state (parameters, EMA parameters, BatchNorm and codebook statistics): per
#   element within rounding + 2.5 x (sum of lr) (Adam's step on an element whose gradient is
#   rounding), and at most 1 % of the elements more than 1e-5 apart;
# - integers of the state (step, rng, Adam's counts) and the checkpointed data positions: exact,
#   also at the end of the chain against the uninterrupted run.
#
# What a real bug does to these (tests/test_mp_compare.py checks the first three in-process):
# - a restore that drops the optimizer state: Adam's counts restart (exact integers), and with
#   b1 = 0.5, b2 = 0.9 the moments lose b1^n / b2^n of their history n steps later (n = 2: 25 % /
#   81 %, 25x / 80x MOMENT_RTOL);
# - a wrong data order or a host reading the other's share: other images, losses 1e-2..1e-1 apart
#   at the first such step (measured step-to-step changes of the L1 loss: 1.6e-2..2.6e-1, i.e.
#   80x VALUES and more), moments O(1) apart, positions differ;
# - different sharding math (a gradient summed instead of averaged over the hosts, or one
#   host's half only): moments 2x / 0.5x or O(1) apart (Adam's update alone is scale-invariant,
#   its moments are not), gradient norms 2x at once, losses apart from the next step on.
FIRST_STEP = dict(rtol=2e-5, atol=1e-7)
FIRST_STEP_GRADIENTS = dict(rtol=2e-3, atol=1e-6)
VALUES = dict(rtol=2e-4, atol=1e-6)
GRADIENTS = dict(rtol=1e-2, atol=1e-6)
GRADIENT_TAGS = ("grad_norm", "gan/d_weight", "loss/total_g")
MOMENT_RTOL = 1e-2
MU_FLOOR = 1e-7


def _is_gradient_tag(tag: str) -> bool:
  return tag.split("/", 1)[-1].startswith(GRADIENT_TAGS)


def scalar_mismatches(got: dict, want: dict, steps, *, start: int = 0, first=FIRST_STEP,
                      first_gradients=FIRST_STEP_GRADIENTS, values=VALUES,
                      gradients=GRADIENTS) -> list[str]:
  """The train scalars of `steps` that break the rules above (one line each); [] if none.

  `start`: the step of the state both runs started from (its next step is held to `first`, its
  gradient tags to `first_gradients`).
  """
  bad = []
  for step in steps:
    if step not in got or step not in want:
      bad.append(f"step {step}: missing ({sorted(got)} vs {sorted(want)})")
      continue
    missing = set(want[step]) - set(got[step])
    if missing:
      bad.append(f"step {step}: tags missing {sorted(missing)}")
    for tag in sorted(set(want[step]) & set(got[step])):
      if step == start + 1:
        tol = first_gradients if _is_gradient_tag(tag) else first
      else:
        tol = gradients if _is_gradient_tag(tag) else values
      g, w = got[step][tag], want[step][tag]
      if not abs(g - w) <= tol["atol"] + tol["rtol"] * abs(w):
        bad.append(f"{tag}@{step}: {g!r} vs {w!r} ({abs(g - w) / max(abs(w), 1e-30):.2e} rel)")
  return bad


def assert_train_scalars_close(got: dict, want: dict, steps, **tols):
  bad = scalar_mismatches(got, want, steps, **tols)
  assert not bad, "\n".join(bad)


def assert_scalars_close(got: dict, want: dict, steps, rtol=1e-4, atol=1e-6):
  """Every tag of `want` at `steps` within one tolerance (evaluation metrics)."""
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


def _moment(path) -> str:
  """'mu' / 'nu' for a leaf of an Adam state (optax's ScaleByAdamState), else ''."""
  for k in path:
    if getattr(k, "name", None) in ("mu", "nu"):
      return k.name
  return ""


def state_mismatches(a, b, lr_sum, *, moment_rtol=MOMENT_RTOL, mu_floor=MU_FLOOR,
                     floats: bool = True) -> list[str]:
  """The leaves of state `a` that break the rules above against reference `b`; [] if none.

  `lr_sum`: the learning rates of the steps since the common state. `floats=False`: integers only.
  """
  la, tree_a = jax.tree_util.tree_flatten_with_path(a)
  lb, tree_b = jax.tree_util.tree_flatten_with_path(b)
  if len(la) != len(lb):
    return [f"{len(la)} leaves vs {len(lb)}: {tree_a} vs {tree_b}"]
  bad, apart = [], []
  for (path, x), (_, y) in zip(la, lb):
    name, x, y = jax.tree_util.keystr(path), np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
      bad.append(f"{name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
    elif not np.issubdtype(x.dtype, np.floating):
      if not np.array_equal(x, y):
        bad.append(f"{name}: integers differ ({np.sum(x != y)} of {x.size})")
    elif not floats:
      continue
    elif kind := _moment(path):
      x, y = x.astype(np.float64), y.astype(np.float64)
      floor = (mu_floor if kind == "mu" else mu_floor**2) * np.sqrt(x.size)
      d, n = np.linalg.norm(x - y), np.linalg.norm(y)
      if not d <= moment_rtol * n + floor:
        bad.append(f"{name}: |a - b| = {d:.3g}, |b| = {n:.3g} ({d / max(n, 1e-30):.2e} rel)")
    else:
      x, y = x.astype(np.float64), y.astype(np.float64)
      diff = np.abs(x - y)
      over = diff > 1e-4 * np.abs(y) + 2.5 * lr_sum + 1e-6
      if np.any(over):
        bad.append(f"{name}: {np.sum(over)} elements apart by more than 2.5 lr_sum "
                   f"(max {diff.max():.3g}, lr_sum {lr_sum:.3g})")
      apart.append(diff.ravel() > 1e-5)
  if apart and np.mean(np.concatenate(apart)) >= 1e-2:
    bad.append(f"{np.mean(np.concatenate(apart)):.2%} of the elements more than 1e-5 apart")
  return bad


def assert_states_close(a, b, lr_sum, **tols):
  bad = state_mismatches(a, b, lr_sum, **tols)
  assert not bad, "\n".join(bad)


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

  def restore_positions(self, saved: dict):
    """Each host at its own position of a 2-process checkpoint's `data` item."""
    assert saved["process_count"] == 2, saved
    for h, state in zip(self.hosts, saved["processes"]):
      h.set_state(state)


def restore_two_host_positions(monkeypatch):
  """A 1-process reference that restores a 2-process checkpoint reads on as the two hosts would
  (the trainers restore the data position through `pipeline.restore_position`)."""
  from maskvq_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  real = pipeline.restore_position

  def restore(it, saved):
    if isinstance(it, TwoHostData) and len(saved.get("processes", ())) == 2:
      it.restore_positions(saved)
    else:
      real(it, saved)
  monkeypatch.setattr(pipeline, "restore_position", restore)
