"""Gradient accumulation (`optim.grad_accum_steps`): n micro-batches of B/n, one update.

Stage 2: the update equals one step on the whole batch B (losses are means; no dropout in the
tiny config), on 8 devices with the batch sharded. Stage 1: BatchNorm and the EMA codebook move
once per micro-batch and the adaptive GAN weight is per micro-batch (see stage1/trainer.py), so
the step is checked against the same computation written out by hand: the micro-batches'
gradients in sequence, averaged, one Adam update each for G and D.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import quickstart
from maskvq_jax.core import loop
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.models import MQVAE
from maskvq_jax.stage1 import trainer as trainer1
from maskvq_jax.stage2 import trainer as trainer2
from stage1_testlib import enable_compile_cache, tiny as tiny1  # tests/ is on sys.path
from stage2_testlib import tiny as tiny2

enable_compile_cache()


def _close(a, b, rtol, atol, scaled_atol=0.0):
  """allclose per leaf; `scaled_atol` adds that fraction of the leaf's largest |value| to atol."""
  def check(u, v):
    u, v = np.asarray(u), np.asarray(v)
    extra = scaled_atol * float(np.abs(v).max()) if v.size and v.dtype.kind == "f" else 0.0
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol + extra)
  jax.tree.map(check, a, b)


def test_microbatches_are_strided_and_cover_the_batch():
  x = jnp.arange(12).reshape(12, 1)
  mb = loop.microbatches({"x": x}, 3)["x"]
  assert mb.shape == (3, 4, 1)
  np.testing.assert_array_equal(mb[1, :, 0], [1, 4, 7, 10])
  np.testing.assert_array_equal(np.sort(mb.reshape(-1)), np.arange(12))


def test_accumulate_means():
  fn = lambda c, x, i: (c + 1, ({"g": x * 2.0}, {"m": jnp.sum(x)}))
  c, g, m = loop.accumulate(fn, jnp.zeros((), jnp.int32), jnp.arange(6.0).reshape(3, 2), 3)
  assert int(c) == 3
  np.testing.assert_allclose(np.asarray(g["g"]), [4.0, 6.0])  # 2 * mean of the rows
  np.testing.assert_allclose(float(m["m"]), 5.0)


@pytest.mark.parametrize("override,match", [
    ({"optim.grad_accum_steps": 3}, r"grad_accum_steps=3: input.batch_size=8 must split"),
    ({"optim.grad_accum_steps": 2}, r"each a multiple of the data-parallel size 8"),
    ({"optim.grad_accum_steps": 0}, r"grad_accum_steps=0 must be >= 1"),
])
def test_bad_accumulation_is_a_clear_error(override, match):
  with pytest.raises(ValueError, match=match):
    trainer1.validate_config(tiny1(**override), 8)


def test_stage1_accumulation_needs_one_statistics_update():
  c = tiny1(ema_updates_per_step=2, **{"optim.grad_accum_steps": 2, "input.batch_size": 16})
  with pytest.raises(ValueError, match="grad_accum_steps=2 needs ema_updates_per_step=1"):
    trainer1.validate_config(c, 8)


# --------------------------------------------------------------------------- stage 2
def _stage2_steps(n, tok, batches):
  c = trainer2.resolve_config(tiny2("/unused", "cond=none", **{
      "optim.warmup_steps": 0, "optim.grad_accum_steps": n, "input.batch_size": 16}), tok)
  trainer2.validate_config(c, jax.device_count(), tok.num_tokens)
  parts = trainer2.build(c, tok)
  mesh = sharding_lib.make_mesh(c.mesh)
  rules = sharding_lib.get_rules(c.sharding_rules)
  create = functools.partial(trainer2.create_state, parts=parts)
  _, state_sh = sharding_lib.state_shardings(create, jax.random.PRNGKey(0), mesh=mesh, rules=rules)
  batch_sh = sharding_lib.batch_sharding(mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=state_sh)(
        jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(trainer2.train_step, parts=parts),
                   in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None))
    out = []
    for b in batches:
      state, m = step(state, jax.device_put(b, batch_sh), None)
      out.append(jax.device_get(m))
  return jax.device_get(state), out


def test_stage2_accumulated_update_equals_the_whole_batch():
  tok = MQVAE(**quickstart.get_config("tiny").model.to_dict())
  k, n_pos = tok.num_tokens, tok.grid ** 2
  batches = []
  for i in range(2):
    r = np.random.default_rng(i)
    batches.append({
        "codes": r.integers(0, tok.codebook_size, (16, k)).astype(np.int32),
        "positions": np.stack([r.permutation(n_pos)[:k] for _ in range(16)]).astype(np.int32)})
  whole, m1 = _stage2_steps(1, tok, batches)
  accum, m4 = _stage2_steps(2, tok, batches)  # two micro-batches of 8, one per device each
  for a, b in zip(m1, m4):
    for key in ("loss", "loss/code_loss", "loss/position_loss", "code_acc", "grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=2e-5, err_msg=key)
  _close(accum.opt_state, whole.opt_state, rtol=1e-4, atol=1e-9)  # Adam moments: the gradients
  # atol: the attention key biases have an exactly-zero gradient (softmax ignores them); its float
  # noise (~1e-12) becomes ~1e-6 parameter noise through Adam's normalisation
  _close(accum.params, whole.params, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- stage 1
def test_stage1_accumulated_step_is_the_mean_of_sequential_microbatches():
  c = tiny1(**{"optim.warmup_steps": 0, "optim.grad_accum_steps": 2, "input.batch_size": 8,
               "model.restart_unused_codes": False})
  parts = trainer1.build(c)
  state = nn.meta.unbox(jax.jit(functools.partial(trainer1.create_state, parts=parts))(
      jax.random.PRNGKey(0)))
  img = jax.random.randint(jax.random.PRNGKey(1), (8, 16, 16, 3), 0, 256).astype(jnp.uint8)
  new, m = jax.jit(functools.partial(trainer1.train_step, parts=parts))(state, {"image": img}, None)

  def reference(state, img):
    x = img.astype(jnp.float32) / 127.5 - 1.0
    rngs = jax.random.split(jax.random.fold_in(state.rng, state.step), 6)
    df = jnp.float32(c.loss.disc_factor)
    stats = {"g": state.batch_stats["g"], "vq": state.vq_stats, "d": state.batch_stats["d"]}
    gs, ds, l1 = [], [], []
    for i in range(2):
      keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(rngs)
      g, stats, d_out, mm, _, _ = trainer1._gan_grads(  # pylint: disable=protected-access
          state.params, stats, x[i::2], keys, df, state.step, None, parts)
      dg, _ = trainer1._disc_grads(  # pylint: disable=protected-access
          d_out, state.params["d"], df, parts)
      gs.append(g), ds.append(dg), l1.append(mm["loss/l1"])
    mean = lambda a, b: jax.tree.map(lambda u, v: (u + v) / 2, a, b)
    g, d = mean(*gs), mean(*ds)
    ug, opt_g = parts.tx_g.update(g, state.opt_state["g"], state.params["g"])
    ud, opt_d = parts.tx_d.update(d, state.opt_state["d"], state.params["d"])
    return (optax.apply_updates(state.params["g"], ug), optax.apply_updates(state.params["d"], ud),
            {"g": opt_g, "d": opt_d}, stats, (l1[0] + l1[1]) / 2)

  g_ref, d_ref, opt_ref, stats_ref, l1_ref = jax.jit(reference)(state, img)
  np.testing.assert_allclose(m["loss/l1"], l1_ref, rtol=1e-5)
  _close(new.opt_state, opt_ref, rtol=1e-4, atol=2e-8, scaled_atol=1e-5)  # the mean gradients
  # Parameters: a bias followed by a normalisation has an exactly-zero gradient whose float noise
  # Adam's first step turns into up to +-lr (2e-4 here), so only that much is checked
  _close(new.params["g"], g_ref, rtol=1e-5, atol=2 * 2e-4)
  _close(new.params["d"], d_ref, rtol=1e-5, atol=2 * 2e-4)
  _close(new.vq_stats, stats_ref["vq"], rtol=1e-5, atol=1e-6)
  _close(new.batch_stats, {"g": stats_ref["g"], "d": stats_ref["d"]}, rtol=1e-5, atol=1e-6)
  # two EMA updates happened (decay 0.99 from zero counts): 0.0199 x tokens, not 0.01 x tokens
  tokens = 8 * int(0.5 * 8 * 8)
  cse = np.asarray(new.vq_stats["quantize"]["cluster_size_ema"])
  np.testing.assert_allclose(float(np.sum(cse)), (0.01 * 0.99 + 0.01) * tokens / 2, rtol=1e-3)
