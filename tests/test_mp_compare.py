"""The rules comparing a multi-process run with its single-process reference
(`mp_testlib.state_mismatches`, `mp_testlib.scalar_mismatches`; the reasons are in mp_testlib):
they accept what rounding does through Adam, and reject what a missed optimizer restore, a wrong
data order or other sharding math does.

In-process and in seconds: a toy least-squares model trained with the MQ-VAE's Adam (b1 0.5,
b2 0.9, eps 1e-8, warm-up lr), with a leaf whose gradient is zero in exact arithmetic and comes
out as rounding (|g| <= 1.3e-8, the sign differing between the two runs, as measured in the GAN
step), and a relative gradient difference between the runs growing 15x per step from 2e-7 (the
adaptive GAN weight's amplification) up to MOMENT_RTOL / 3.
"""
import jax
import numpy as np
import optax
import pytest

import mp_testlib

STEPS, RESTORE = 8, 4  # the toy runs 8 steps; "restored" at step 4
LR = [2e-4 * t / 20 for t in range(STEPS)]  # the tiny config's warm-up
TX = optax.adam(lambda count: np.asarray(LR)[count], b1=0.5, b2=0.9)
TARGETS = np.random.default_rng(0).normal(size=(STEPS, 4096)).astype(np.float32)


def _run(noise_seed, *, drift=True, drop_opt=False, keep_count=False, swap=False, scale=1.0):
  """Returns (state, {step: {tag: value}}) of one run; the keywords are the bugs."""
  rng = np.random.default_rng(noise_seed)
  params = {"w": np.zeros(4096, np.float32), "d": {"k_bias": np.zeros(8, np.float32)}}
  opt = TX.init(params)
  order = list(range(STEPS))
  if swap:  # the two batches after the restore read in the other order
    order[RESTORE], order[RESTORE + 1] = order[RESTORE + 1], order[RESTORE]
  logged = {}
  for t in range(STEPS):
    if t == RESTORE and drop_opt:  # a restore that re-initialises the optimizer state
      fresh = TX.init(params)
      if keep_count:  # ... but the step counters survive (only the moments would tell)
        fresh = jax.tree.map(lambda f, o: o if f.dtype == np.int32 else f, fresh, opt)
      opt = fresh
    target = TARGETS[order[t]]
    resid = params["w"] - target
    rel = min(2e-7 * 15.0**t, mp_testlib.MOMENT_RTOL / 3) if drift and noise_seed else 0.0
    g_w = resid * (1 + rel) * (scale if t >= RESTORE else 1.0)
    g_w = g_w * (1 + 1e-7 * rng.standard_normal(4096)).astype(np.float32)
    g_k = rng.uniform(-1.3e-8, 1.3e-8, size=8).astype(np.float32)  # zero in exact arithmetic
    grads = {"w": g_w.astype(np.float32), "d": {"k_bias": g_k}}
    logged[t + 1] = {"train/loss": float(np.mean(resid**2)), "train/lr": LR[t],
                     "train/grad_norm": float(np.linalg.norm(g_w))}
    upd, opt = TX.update(grads, opt, params)
    params = optax.apply_updates(params, upd)
  state = {"step": np.int32(STEPS), "rng": np.arange(2, dtype=np.uint32),
           "params": jax.device_get(params), "opt_state": jax.device_get(opt)}
  return state, logged


LR_SUM = sum(LR)
REF = _run(0)


def test_rounding_and_amplified_drift_pass():
  state, logged = _run(1)
  # the rounding-level leaf really moved apart (by > lr of one step): a per-element relative
  # comparison of parameters or moments would fail here
  k_a, k_b = state["params"]["d"]["k_bias"], REF[0]["params"]["d"]["k_bias"]
  assert np.max(np.abs(k_a - k_b)) > max(LR)
  assert mp_testlib.state_mismatches(state, REF[0], LR_SUM) == []
  assert mp_testlib.scalar_mismatches(logged, REF[1], range(1, STEPS + 1)) == []


@pytest.mark.parametrize("keep_count", [False, True])
def test_restore_without_optimizer_state_fails(keep_count):
  state, _ = _run(1, drop_opt=True, keep_count=keep_count)
  bad = mp_testlib.state_mismatches(state, REF[0], LR_SUM)
  assert any(".mu" in b for b in bad) and any(".nu" in b for b in bad), bad
  assert any(".count" in b for b in bad) != keep_count, bad


def test_wrong_data_order_fails():
  state, logged = _run(1, swap=True)
  assert mp_testlib.state_mismatches(state, REF[0], LR_SUM)
  bad = mp_testlib.scalar_mismatches(logged, REF[1], range(1, STEPS + 1))
  assert any(b.startswith(f"train/loss@{RESTORE + 1}") for b in bad), bad


@pytest.mark.parametrize("scale", [2.0, 0.5])  # summed instead of averaged over 2 hosts / 1 host
def test_other_gradient_scale_fails(scale):
  state, logged = _run(1, scale=scale)
  bad = mp_testlib.state_mismatches(state, REF[0], LR_SUM)
  assert any("['w']" in b and ".mu" in b for b in bad), bad
  assert mp_testlib.scalar_mismatches(logged, REF[1], range(1, STEPS + 1))
