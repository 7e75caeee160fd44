"""Small helpers shared by trainers: durations, schedules, tree norms. Keep this file short."""
import math

import jax
import jax.numpy as jnp
import optax


def total_steps(config) -> int:
  """`config.total_steps` if > 0, else ceil(total_epochs * num_train_examples / batch)."""
  if config.get("total_steps", -1) and config.total_steps > 0:
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * config.input.num_train_examples / config.input.batch_size))


def warmup_steps(config) -> int:
  o = config.optim
  if o.get("warmup_steps", -1) is not None and o.warmup_steps >= 0:
    return int(o.warmup_steps)
  return int(o.warmup_epochs * config.input.num_train_examples / config.input.batch_size)


def learning_rate(config) -> float:
  """`optim.lr` if > 0, else the authors' rule base_lr x global batch size."""
  o = config.optim
  return float(o.lr) if o.lr > 0 else float(o.base_lr * config.input.batch_size)


def schedule(config, peak: float, steps: int, warmup: int) -> optax.Schedule:
  """Linear warm-up from 0 then cosine to min_lr_ratio * peak (models/stage1/utils.py)."""
  kind = config.optim.schedule
  if kind == "constant":
    return optax.constant_schedule(peak)
  if kind != "warmup_cosine":
    raise ValueError(f"unknown optim.schedule {kind!r}; choose warmup_cosine or constant")
  warmup = min(warmup, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=max(warmup, 0), decay_steps=max(steps, warmup + 1),
      end_value=peak * config.optim.min_lr_ratio)


def tree_l2(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def num_params(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def itstime(step: int, every: int, total: int, *, last: bool = True) -> bool:
  """True on multiples of `every` (and on the last step when `last`)."""
  return bool(every and every > 0 and step % every == 0) or (last and step == total)
