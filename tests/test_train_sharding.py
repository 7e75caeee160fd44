"""The jitted, sharded train step equals the single-device step (dp and fsdp on 8 CPU devices)."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path

enable_compile_cache()


def _one_step(config, devices):
  mesh = sharding_lib.make_mesh(config.mesh, devices=devices)
  rules = sharding_lib.get_rules(config.sharding_rules)
  parts = trainer.build(config)
  create = functools.partial(trainer.create_state, parts=parts)
  rng = jax.random.PRNGKey(config.seed)
  _, sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  bsh = sharding_lib.batch_sharding(mesh, rules)
  repl = sharding_lib.replicated(mesh)
  batch = next(input_pipeline.train_iter(config, bsh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=sh)(rng)
    step = jax.jit(functools.partial(trainer.train_step, parts=parts),
                   in_shardings=(sh, bsh, repl), out_shardings=(sh, repl), donate_argnums=(0,))
    new, m = step(state, batch, None)
  return jax.device_get((new, m)), sh


@pytest.fixture(scope="module")
def reference():
  c = tiny(mesh=(("data", 1), ("fsdp", 1), ("model", 1)), **{"optim.warmup_steps": 0})
  return _one_step(c, jax.devices()[:1])[0]


@pytest.mark.parametrize("rules,mesh", [
    ("dp", (("data", -1), ("fsdp", 1), ("model", 1))),
    ("fsdp", (("data", 4), ("fsdp", 2), ("model", 1))),
])
def test_sharded_step_equals_single_device(reference, rules, mesh):
  c = tiny(sharding_rules=rules, mesh=mesh, **{"optim.warmup_steps": 0})
  (state, m), sh = _one_step(c, jax.devices())
  ref_state, ref_m = reference
  if rules == "fsdp":  # some parameters really are split over the fsdp axis
    assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(sh.params))
  for k, v in ref_m.items():
    np.testing.assert_allclose(m[k], v, rtol=2e-4, atol=1e-6, err_msg=k)
  # Statistics (EMA codebook, BatchNorm) are linear in the data: tight tolerance.
  for a, b in zip(jax.tree.leaves((state.vq_stats, state.batch_stats)),
                  jax.tree.leaves((ref_state.vq_stats, ref_state.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Adam's first step is ~lr * sign(g): allow a flip only where |g| is at rounding level.
  lr = float(m["lr"])
  assert lr > 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, atol=2.5 * lr + 1e-6)
  diff = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params))])
  assert np.mean(diff > 1e-5) < 1e-3, (np.mean(diff > 1e-5), diff.max())


def test_init_state_equals_the_plain_jitted_initialiser_with_its_shardings(monkeypatch):
  """`loop.init_state` compiles the initialiser with INIT_COMPILER_OPTIONS on the CPU (the options
  reach the compiler): the same parameters as the plain jitted one (to float rounding), laid out
  with the requested shardings; with no options for the backend it is the plain jitted one, bit
  for bit."""
  from maskvq_jax.core import loop  # pylint: disable=g-import-not-at-top
  c = tiny(sharding_rules="fsdp", mesh=(("data", 4), ("fsdp", 2), ("model", 1)))
  mesh = sharding_lib.make_mesh(c.mesh, devices=jax.devices())
  rules = sharding_lib.get_rules(c.sharding_rules)
  parts = trainer.build(c)
  create = functools.partial(trainer.create_state, parts=parts)
  rng = jax.random.PRNGKey(c.seed)
  _, sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  assert loop.INIT_COMPILER_OPTIONS.get("cpu")  # this test runs the CPU's options
  seen, compile_ = [], jax.stages.Lowered.compile
  def recording(self, compiler_options=None, **kw):
    seen.append(compiler_options)
    return compile_(self, compiler_options=compiler_options, **kw)
  monkeypatch.setattr(jax.stages.Lowered, "compile", recording)
  got = loop.init_state(create, rng, mesh, rules, sh)
  assert seen == [loop.INIT_COMPILER_OPTIONS["cpu"]]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    want = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=sh)(rng)
  leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(leaves) == len(want_leaves) == len(jax.tree.leaves(sh)) > 100
  for a, b, s in zip(leaves, want_leaves, jax.tree.leaves(sh)):
    assert a.sharding.is_equivalent_to(s, a.ndim)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  plain = dict(loop.INIT_COMPILER_OPTIONS)
  try:
    loop.INIT_COMPILER_OPTIONS.clear()
    again = loop.init_state(create, rng, mesh, rules, sh)
  finally:
    loop.INIT_COMPILER_OPTIONS.update(plain)
  for a, b in zip(jax.tree.leaves(again), want_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
