"""Loss terms, frozen LPIPS and the PatchGAN discriminator (tiny shapes, CPU)."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskvq_jax.stage1 import losses
from maskvq_jax.models import lpips as lpips_lib
from maskvq_jax.core import loop as utils
from maskvq_jax.models.discriminator import NLayerDiscriminator


def test_lpips_identical_zero_and_different_positive():
  lp = lpips_lib.LPIPS()
  params = lp.load_params()
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  same = lp(params, x, x)
  small = lp(params, x, jnp.clip(x + 0.05 * noise, -1, 1))
  big = lp(params, x, jnp.clip(x + 0.5 * noise, -1, 1))
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert same.shape == (2,)
  assert np.all(small > 0) and np.all(big > small)


def test_lpips_params_are_frozen():
  lp = lpips_lib.LPIPS()
  params = lp.load_params()
  x = jnp.zeros((1, 16, 16, 3))
  g = jax.grad(lambda p: jnp.sum(lp(p, x, x + 0.1)))(params)
  assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(g))


def test_discriminator_param_count_and_patch_shape():
  d = NLayerDiscriminator()  # authors' default: ndf 64, 3 layers
  x = jnp.zeros((1, 256, 256, 3))
  v = jax.eval_shape(lambda: nn.meta.unbox(d.init(jax.random.PRNGKey(0), x)))
  assert utils.num_params(v["params"]) == 2_765_633  # ~2.77M as in the reference count
  out = jax.eval_shape(lambda: d.apply(nn.meta.unbox(d.init(jax.random.PRNGKey(0), x)), x,
                                       train=False))
  assert out.shape == (1, 30, 30, 1)


def test_discriminator_init_statistics():
  v = nn.meta.unbox(NLayerDiscriminator(ndf=64, n_layers=3).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  k = np.asarray(v["params"]["conv_3"]["kernel"])
  assert abs(k.std() - 0.02) < 0.002 and abs(k.mean()) < 0.002
  s = np.asarray(v["params"]["bn_3"]["scale"])
  assert abs(s.mean() - 1.0) < 0.01 and 0.01 < s.std() < 0.03


def test_hinge_and_generator_losses():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
  expect = 0.5 * (np.mean(np.maximum(0, 1 - np.array([2.0, 0.5, -1.0]))) +
                  np.mean(np.maximum(0, 1 + np.array([-2.0, 0.0, 1.0]))))
  np.testing.assert_allclose(losses.hinge_d_loss(real, fake), expect, rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(fake), 1.0 / 3.0, rtol=1e-6)


def test_adaptive_weight_matches_taming_formula():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 3, 8, 3)), rng.normal(size=(3, 3, 8, 3))
  w = losses.adaptive_weight(jnp.asarray(a), jnp.asarray(b), disc_weight=0.75, max_weight=None)
  np.testing.assert_allclose(w, np.linalg.norm(a) / (np.linalg.norm(b) + 1e-4) * 0.75, rtol=1e-5)
  capped = losses.adaptive_weight(jnp.asarray(10 * a), jnp.asarray(b), disc_weight=0.75,
                                  max_weight=1.0)
  assert float(capped) == 1.0
  huge = losses.adaptive_weight(jnp.ones(4), jnp.zeros(4), disc_weight=1.0, max_weight=None)
  assert float(huge) == 1e4  # clipped to [0, 1e4] before the 0.75 factor


def test_loss_modules_do_not_import_tensorflow():
  code = ("import sys, maskvq_jax.stage1.losses, maskvq_jax.models.lpips, maskvq_jax.models.discriminator, "
          "maskvq_jax.models, maskvq_jax.core.sharding, maskvq_jax.evaluation.step_metrics; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
