"""Performance options of the Stackformer compute the same function: fused attention, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.models.stackformer import Stackformer

KW = dict(vocab_size=129, position_size=65, block_size=64, d_model=64, n_heads=4, code_layers=2,
          position_layers=2, resid_dropout=0.1, embd_dropout=0.1, attn_dropout=0.0)


def _batch():
  rng = np.random.default_rng(0)
  idx = jnp.asarray(rng.integers(0, 128, (2, 17)))
  pos = jnp.asarray(np.sort(rng.integers(0, 64, (2, 17)), axis=1))
  return idx[:, :-1], pos[:, :-1], idx[:, 1:]


@pytest.mark.parametrize("impl, remat", [("dot_product", False), ("xla", True), ("dot_product", True)])
def test_attention_impl_and_remat_match_reference(impl, remat):
  batch = _batch()
  ref_model = Stackformer(**KW)
  params = ref_model.init(jax.random.key(0), *batch)
  model = Stackformer(**KW, attention_impl=impl, remat=remat)

  def loss(m, p):  # training mode: dropout on, same rng stream
    code, pos = m.apply(p, *batch, train=True, rngs={"dropout": jax.random.key(1)})
    return jnp.sum(code * jnp.cos(code)) + jnp.sum(pos * jnp.sin(pos))

  ref_l, ref_g = jax.value_and_grad(lambda p: loss(ref_model, p))(params)
  l, g = jax.value_and_grad(lambda p: loss(model, p))(params)
  np.testing.assert_allclose(float(l), float(ref_l), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
    # atol relative to the leaf's scale: a few float32 roundings (jax 0.11's XLA attention sums
    # in another order: 1.2e-5 on a leaf of magnitude ~20)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=2e-6 * max(1.0, float(np.abs(b).max())))
  ref_eval = ref_model.apply(params, *batch)
  for a, b in zip(model.apply(params, *batch), ref_eval):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_unknown_attention_impl_is_rejected():
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    Stackformer(**KW, attention_impl="flash").init(jax.random.key(0), *_batch())
