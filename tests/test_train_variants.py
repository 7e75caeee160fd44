"""One train step for the less common configurations: dense VQGAN baseline with bf16 compute,
authors-style double statistics update and a parameter EMA (single device, no mesh)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import vqgan_imagenet256
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path

enable_compile_cache()


def _step(c, steps=1):
  parts = trainer.build(c)
  state = nn.meta.unbox(jax.jit(functools.partial(trainer.create_state, parts=parts))(
      jax.random.PRNGKey(0)))
  x = jax.random.randint(jax.random.PRNGKey(1), (8, 16, 16, 3), 0, 256).astype(jnp.uint8)
  step = jax.jit(functools.partial(trainer.train_step, parts=parts))
  out = []
  for _ in range(steps):
    new, m = step(state, {"image": x}, None)
    out.append((state, new, jax.device_get(m)))
    state = new
  return out


def test_masked_bf16_double_statistics_update_and_param_ema():
  c = tiny(compute_dtype="bfloat16", ema_updates_per_step=2, param_ema=0.9,
           **{"optim.warmup_steps": 0, "model.restart_unused_codes": False})
  ((old, new, m),) = _step(c)
  assert all(np.isfinite(v) for v in m.values()), m
  assert int(new.step) == 1
  # The parameter EMA moved by (1 - 0.9) of the update, in float32.
  k = lambda t: np.asarray(t["decoder"]["conv_out"]["kernel"])
  p0, p1, e1 = k(old.params["g"]), k(new.params["g"]), k(new.ema_params)
  assert e1.dtype == np.float32 and p1.dtype == np.float32
  np.testing.assert_allclose(e1, 0.9 * p0 + 0.1 * p1, rtol=1e-5, atol=1e-7)
  # Two forwards per batch: with decay 0.99 from zero counts, the EMA cluster sizes sum to
  # (0.01 * 0.99 + 0.01) * tokens after two updates (0.01 * tokens after one).
  tokens = 8 * int(0.5 * 8 * 8)
  total = float(np.sum(np.asarray(new.vq_stats["quantize"]["cluster_size_ema"])))
  np.testing.assert_allclose(total, 0.0199 * tokens, rtol=1e-3)


def test_dense_vqgan_baseline_config_trains():
  c = vqgan_imagenet256.get_config("runlocal")
  assert c.model.dense and c.model.keep_ratio == 1.0
  c.input.update(res=16, batch_size=8)
  c.model.update(resolution=16, codebook_size=16, codebook_dim=16)
  c.loss.perceptual_weight = 0.0
  c.disc.update(ndf=16, n_layers=2)
  ((_, new, m),) = _step(c)
  assert all(np.isfinite(v) for v in m.values()), m
  assert "score/mean" not in m and new.batch_stats["g"] == {}


def test_step_without_discriminator_equals_full_step_with_gan_off():
  """`disc_factor = 0` skips the discriminator statically; the generator update, EMA codebook,
  scorer statistics and reconstruction metrics equal the full step's with the GAN switched off
  at run time (disc_start beyond the run), and the discriminator is left untouched."""
  base = {"optim.warmup_steps": 0, "param_ema": 0.9}
  fast = _step(tiny(**base, **{"loss.disc_factor": 0.0}), steps=2)
  full = _step(tiny(**base, **{"loss.disc_start": 10**6}), steps=2)
  for (_, nf, mf), (_, nd, md) in zip(fast, full):
    for a, b in ((nf.params["g"], nd.params["g"]), (nf.ema_params, nd.ema_params),
                 (nf.vq_stats, nd.vq_stats), (nf.batch_stats["g"], nd.batch_stats["g"]),
                 (nf.opt_state["g"], nd.opt_state["g"])):
      jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v),
                                                           rtol=2e-5, atol=1e-6), a, b)
    for k in ("loss/l1", "loss/commit", "loss/total_g", "grad_norm/g", "codebook/perplexity"):
      np.testing.assert_allclose(mf[k], md[k], rtol=2e-5, err_msg=k)
    assert set(mf) == set(md)
    assert mf["loss/d"] == 0.0 and mf["gan/disc_factor"] == 0.0
  first_old, first_new, _ = fast[0]
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)),
               (first_old.params["d"], first_old.batch_stats["d"]),
               (first_new.params["d"], first_new.batch_stats["d"]))
