"""Orbax checkpointing: restore onto a different mesh, corrupt-latest fallback, metadata."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskvq_jax.core import checkpointing
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path

enable_compile_cache()


def _abstract(config):
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.get_rules(config.sharding_rules)
  parts = trainer.build(config)
  create = functools.partial(trainer.create_state, parts=parts)
  rng = jax.random.PRNGKey(0)
  abstract, sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  return abstract, sh, create, rng, mesh, rules


def test_restore_train_state_onto_a_different_mesh(tmp_path):
  dp = tiny()
  abstract, sh, create, rng, mesh, rules = _abstract(dp)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=sh)(rng)
  ck = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  ck.save(1, state, meta={"step": 1, "note": "dp"}, data_state={"next_index": 7})
  ck.close()

  fsdp = tiny(sharding_rules="fsdp", mesh=(("data", 2), ("fsdp", 4), ("model", 1)))
  abstract2, sh2, *_ = _abstract(fsdp)
  step, restored, meta, data = checkpointing.Checkpointer(str(tmp_path), save_every=1
                                                          ).restore_latest(abstract2)
  assert (step, meta["note"], data) == (1, "dp", {"next_index": 7})
  for a, b, s in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(restored),
                     jax.tree.leaves(sh2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.spec == s.spec
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(restored.params))


def _small_state(v):
  return {"w": jnp.full((8, 4), v, jnp.float32), "step": jnp.asarray(v, jnp.int32)}


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
  d = str(tmp_path / "checkpoints")
  ck = checkpointing.Checkpointer(d, save_every=1, max_to_keep=5)
  for s in (1, 2, 3):
    ck.save(s, _small_state(s), meta={"step": s})
  ck.close()
  # Corrupt step 3: truncate every array data file.
  for root, _, files in os.walk(os.path.join(d, "3", "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")
  ck = checkpointing.Checkpointer(d, save_every=1, max_to_keep=5)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _small_state(0))
  step, state, meta, _ = ck.restore_latest(abstract)
  assert step == 2 and meta["step"] == 2 and int(state["step"]) == 2
  assert ck.all_steps() == [1, 2]
  assert os.listdir(tmp_path / "corrupt_checkpoints")[0].startswith("3-")
  # Training can go on and write step 3 again.
  assert ck.save(3, _small_state(33), meta={"step": 3}, force=True)
  ck.close()
  ck = checkpointing.Checkpointer(d, save_every=1)
  assert int(ck.restore_latest(abstract)[1]["step"]) == 33


def test_partial_checkpoint_is_ignored(tmp_path):
  d = str(tmp_path / "checkpoints")
  ck = checkpointing.Checkpointer(d, save_every=1)
  ck.save(1, _small_state(1), meta={"step": 1})
  ck.close()
  os.makedirs(os.path.join(d, "2.orbax-checkpoint-tmp", "state"))  # a save killed mid-way
  ck = checkpointing.Checkpointer(d, save_every=1)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _small_state(0))
  assert ck.restore_latest(abstract)[0] == 1


def test_keep_last_n_plus_keep_every_m(tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path), save_every=2, max_to_keep=2, keep_every=4,
                                  async_save=False)
  for s in range(1, 13):
    ck.save(s, _small_state(s), meta={"step": s})
  ck.close()
  steps = checkpointing.Checkpointer(str(tmp_path), save_every=1).all_steps()
  assert steps[-2:] == [10, 12] and 4 in steps and 8 in steps and 6 not in steps
