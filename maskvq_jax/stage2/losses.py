"""Stage-2 (Stackformer) loss: code cross-entropy + w * position cross-entropy.

Both terms are plain means over B * T, exactly as the authors' `F.cross_entropy` calls; the
official configs use w = loss_position_weight = 1.0.
"""
import jax
import jax.numpy as jnp


def row_mean(values, valid=None):
  """Mean of values [B, ...]; with `valid` (bool [B]) over those rows only (each row's elements
  weigh the same, so this is the mean over B * T of the real rows)."""
  values = values.astype(jnp.float32)
  if valid is None:
    return jnp.mean(values)
  per_row = jnp.mean(values.reshape(values.shape[0], -1), axis=-1)
  per_row = jnp.where(valid, per_row, 0.0)  # where, not *: a padding NaN stays out
  return jnp.sum(per_row) / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def cross_entropy(logits, targets, valid=None):
  """Mean cross-entropy of logits [..., V] (float32 log-softmax) against int targets [...];
  over the rows where `valid` (bool [B], optional) is True."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return row_mean(nll, valid)


def stackformer_loss(code_logits, position_logits, code_targets, position_targets,
                     position_weight: float = 1.0, valid=None):
  """Returns (loss, {"code_loss", "position_loss"}).

  Args:
    code_logits: [B, T, V] from `Stackformer.__call__`; code_targets: [B, T] = idx[:, 1:].
    position_logits: [B, T, P]; position_targets: [B, T] = pos_idx[:, 1:].
    position_weight: weight of the position term (official loss_position_weight).
    valid: optional bool [B]: only those rows count (evaluation batches padded to the shards).
  """
  code_loss = cross_entropy(code_logits, code_targets, valid)
  position_loss = cross_entropy(position_logits, position_targets, valid)
  loss = code_loss + position_weight * position_loss
  return loss, {"code_loss": code_loss, "position_loss": position_loss}
