"""Shared bits of the stage-2 tests: a tiny stage-1 workdir (no training) and the tiny config.

The stage-1 workdir is what the stage-1 trainer writes (`<dir>/checkpoints/<step>/{state, meta,
data}`), built from `trainers.mqvae.create_state` + one save, so the stage-2 tests exercise the
real loader without paying for stage-1 steps.
"""
import functools
import os

import flax.linen as nn
import jax

from configs import quickstart
from configs import quickstart_stage2
from maskvq_jax.core import checkpointing
from maskvq_jax.core import loop
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.stage1 import trainer as mqvae


def make_stage1_workdir(workdir: str, arg: str = "", step: int = 3) -> str:
  """Writes a randomly initialised tiny stage-1 checkpoint (quickstart:tiny[,arg]) at `step`."""
  c = quickstart.get_config("tiny,perceptual=0" + ("," + arg if arg else ""))
  parts = mqvae.build(c)
  mesh = sharding_lib.make_mesh(c.mesh)
  rules = sharding_lib.get_rules(c.sharding_rules)
  create = functools.partial(mqvae.create_state, parts=parts)
  rng = jax.random.PRNGKey(0)
  _, sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=sh)(rng)
  state = state.replace(step=state.step + step)
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1,
                                  async_save=False)
  ck.save(step, state, meta=loop.run_meta(c, step, mesh), force=True)
  ck.close()
  return workdir


def tiny(tokenizer: str, arg: str = "", **overrides):
  """`configs/quickstart_stage2.py:tiny[,arg]` on `tokenizer`, with dotted-key overrides."""
  c = quickstart_stage2.get_config("tiny" + ("," + arg if arg else ""))
  c.tokenizer = tokenizer
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
