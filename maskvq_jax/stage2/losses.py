"""Stage-2 (Stackformer) loss: code cross-entropy + w * position cross-entropy.

Both terms are plain means over B * T, exactly as the authors' `F.cross_entropy` calls; the
official configs use w = loss_position_weight = 1.0.
"""
import jax
import jax.numpy as jnp


def cross_entropy(logits, targets):
  """Mean cross-entropy of logits [..., V] (float32 log-softmax) against int targets [...]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.mean(nll)


def stackformer_loss(code_logits, position_logits, code_targets, position_targets,
                     position_weight: float = 1.0):
  """Returns (loss, {"code_loss", "position_loss"}).

  Args:
    code_logits: [B, T, V] from `Stackformer.__call__`; code_targets: [B, T] = idx[:, 1:].
    position_logits: [B, T, P]; position_targets: [B, T] = pos_idx[:, 1:].
    position_weight: weight of the position term (official loss_position_weight).
  """
  code_loss = cross_entropy(code_logits, code_targets)
  position_loss = cross_entropy(position_logits, position_targets)
  loss = code_loss + position_weight * position_loss
  return loss, {"code_loss": code_loss, "position_loss": position_loss}
