"""MQ-VAE behaviour: top-k mask, gradient paths, EMA quantizer, sharding, config validation."""
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from maskvq_jax.models import MQVAE
from maskvq_jax.models import quantizer as quantizer_lib

TINY = dict(resolution=16, ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(8,), z_channels=32,
            keep_ratio=0.25, codebook_size=32, codebook_dim=16, demasker_layers=2)  # grid 8x8, K = 16


def _init(model, batch=4, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (batch, model.resolution, model.resolution, 3), minval=-1, maxval=1)
  v = nn.meta.unbox(model.init({"params": jax.random.key(1), "mask": jax.random.key(2)}, x))
  return v, x


@pytest.mark.parametrize("scorer", ["conv", "mlp", "random"])
def test_exactly_k_distinct_positions_kept(scorer):
  model = MQVAE(**TINY, scorer=scorer)
  v, x = _init(model, batch=6)
  (rec, aux), _ = model.apply(v, x, train=True, mutable=["batch_stats", "vq_stats"],
                              rngs={"vq_restart": jax.random.key(3), "mask": jax.random.key(4)})
  k = model.num_tokens
  assert k == 16 and aux["positions"].shape == (6, k) and aux["codes"].shape == (6, k)
  np.testing.assert_array_equal(np.asarray(aux["mask"]).sum(-1), k)
  for row, m in zip(np.asarray(aux["positions"]), np.asarray(aux["mask"])):
    assert len(set(row.tolist())) == k
    np.testing.assert_array_equal(np.flatnonzero(m), np.sort(row))
  if scorer != "random":  # kept positions are the k highest scores, in descending order
    s = np.asarray(aux["scores"])
    kept_s = np.take_along_axis(s, np.asarray(aux["positions"]), 1)
    assert np.all(np.diff(kept_s, axis=1) <= 0)
    assert np.all(kept_s.min(1) >= np.where(np.asarray(aux["mask"]) > 0, -np.inf, s).max(1))
  assert rec.shape == x.shape


@pytest.mark.parametrize("scorer", ["conv", "mlp"])
def test_scorer_gradient_only_through_kept_tokens_and_mask_token_gets_gradient(scorer):
  model = MQVAE(**TINY, scorer=scorer)
  v, x = _init(model)
  perturb = jax.tree.map(jnp.zeros_like, model.apply(v, x, mutable=["perturbations"])[1]["perturbations"])

  def loss(params, perturbations):
    (rec, aux), _ = model.apply({**v, "params": params, "perturbations": perturbations}, x, train=True,
                                mutable=["batch_stats", "vq_stats"], rngs={"vq_restart": jax.random.key(0)})
    return jnp.mean(jnp.abs(rec - x)) + aux["qloss"], aux["mask"]

  (g_params, g_scores), mask = jax.grad(loss, argnums=(0, 1), has_aux=True)(v["params"], perturb)
  g_scores = np.asarray(g_scores["masker"]["scores"])
  mask = np.asarray(mask)
  assert np.all(g_scores[mask == 0] == 0.0)  # masked regions: no gradient to their scores
  assert np.count_nonzero(g_scores[mask == 1]) >= 0.9 * mask.sum()
  first_scorer = "score_conv1" if scorer == "conv" else "score_fc1"
  assert np.abs(np.asarray(g_params["masker"][first_scorer]["kernel"])).max() > 0
  assert np.abs(np.asarray(g_params["demasker"]["mask_token"])).max() > 0


def test_random_scorer_has_no_parameters():
  model = MQVAE(**TINY, scorer="random")
  v, _ = _init(model)
  assert set(v["params"]["masker"]) == {"pre_projection"}


def _numpy_ema(cse, ee, flat, codes, decay, eps=1e-5):
  n = ee.shape[0]
  counts = np.bincount(codes, minlength=n).astype(np.float64)
  sums = np.zeros_like(ee, dtype=np.float64)
  np.add.at(sums, codes, flat)
  return decay * cse + (1 - decay) * counts, decay * ee + (1 - decay) * sums


def test_ema_update_and_dead_code_restart_match_numpy():
  rng = np.random.default_rng(0)
  n, d, m = 16, 8, 40
  flat = rng.normal(size=(m, d)).astype(np.float32)
  codebook = flat[rng.choice(m, 6, replace=False)] + 0.01  # only 6 codes near the data
  codebook = np.concatenate([codebook, rng.normal(size=(n - 6, d)).astype(np.float32) + 50.0])
  cse = np.concatenate([np.full(6, 120.0), np.full(n - 6, 0.5)]).astype(np.float32)  # 10 dead codes
  ee = (codebook * cse[:, None]).astype(np.float32)
  codes = np.asarray(quantizer_lib.nearest_codes(flat, codebook))
  ref_codes = np.argmin(((flat[:, None] - codebook[None]) ** 2).sum(-1), -1)
  np.testing.assert_array_equal(codes, ref_codes)
  new_cse, new_ee, new_cb = map(np.asarray, quantizer_lib.ema_update(
      jnp.asarray(cse), jnp.asarray(ee), jnp.asarray(flat), jnp.asarray(codes), jax.random.key(0), decay=0.99))
  ref_cse, ref_ee = _numpy_ema(cse, ee, flat, codes, 0.99)
  alive = ref_cse >= 1
  assert alive.sum() == 6
  np.testing.assert_allclose(new_cse[alive], ref_cse[alive], rtol=1e-6)
  np.testing.assert_allclose(new_ee[alive], ref_ee[alive], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new_cse[~alive], 1.0)
  # Dead codes restart from distinct input vectors of the batch.
  restarted = new_ee[~alive]
  matches = [np.flatnonzero(np.all(flat == r, axis=1)) for r in restarted]
  assert all(len(mm) == 1 for mm in matches)
  assert len({int(mm[0]) for mm in matches}) == len(restarted)
  tot = new_cse.sum()
  np.testing.assert_allclose(new_cb, new_ee / (tot * (new_cse + 1e-5) / (tot + n * 1e-5))[:, None], rtol=1e-6)


def test_restart_tiles_small_batches_with_bounded_noise():
  rng = np.random.default_rng(1)
  n, d, m = 64, 4, 10  # fewer vectors than codes: tiled with U[0, 0.01/sqrt(d)) noise
  flat = rng.normal(size=(m, d)).astype(np.float32)
  cse = np.zeros(n, np.float32)
  ee = rng.normal(size=(n, d)).astype(np.float32)
  codes = np.zeros(m, np.int32)
  new_cse, new_ee, _ = map(np.asarray, quantizer_lib.ema_update(
      jnp.asarray(cse), jnp.asarray(ee), jnp.asarray(flat), jnp.asarray(codes), jax.random.key(1), decay=0.99))
  np.testing.assert_array_equal(new_cse, 1.0)
  diff = new_ee[:, None, :] - flat[None]  # each row = some input + noise in [0, 0.005)
  ok = np.all((diff >= 0) & (diff < 0.01 / np.sqrt(d) + 1e-7), axis=-1).any(axis=1)
  assert ok.all()


def _train_step(model):
  def step(v, x, key):
    def loss(params):
      (rec, aux), new = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats", "vq_stats"],
                                    rngs={"vq_restart": key})
      return jnp.mean(jnp.abs(rec - x)) + aux["qloss"], (rec, new)
    (l, (rec, new)), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
    return l, rec, g, new
  return step


def test_sharded_forward_and_gradient_equal_single_device():
  assert jax.device_count() == 8
  model = MQVAE(**TINY)
  v, x = _init(model, batch=8)
  key = jax.random.key(7)
  single = jax.jit(_train_step(model))(v, x, key)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rules = (("batch", "data"), ("conv_out", None), ("conv_in", None), ("codebook", None), ("embed", None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    vs = jax.device_put(v, NamedSharding(mesh, P()))
    sharded = jax.jit(_train_step(model))(vs, xs, key)
  assert len(sharded[1].sharding.device_set) == 8
  flat_s, flat_m = jax.tree.leaves(single), jax.tree.leaves(sharded)
  for a, b in zip(flat_s, flat_m):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_encode_then_decode_codes_reproduces_reconstruction():
  for dense in (False, True):
    model = MQVAE(**TINY, dense=dense)
    v, x = _init(model)
    rec, aux = model.apply(v, x)
    codes, positions, _ = model.apply(v, x, method="encode")
    perm = np.random.default_rng(0).permutation(codes.shape[1])  # decode_codes accepts any token order
    images = model.apply(v, codes[:, perm], positions[:, perm], method="decode_codes")
    np.testing.assert_allclose(np.asarray(images), np.asarray(rec), rtol=1e-4, atol=1e-5)
    assert codes.shape[1] == (64 if dense else 16)


@pytest.mark.parametrize("bad, match", [
    (dict(keep_ratio=0.0), "keep_ratio=0.0"),
    (dict(keep_ratio=1.5), "keep_ratio=1.5"),
    (dict(keep_ratio=-0.1), "keep_ratio=-0.1"),
    (dict(keep_ratio=0.01), "k=0 < 1"),
    (dict(resolution=17), "resolution=17"),
    (dict(ch=48, z_channels=48), "ch=48"),
    (dict(z_channels=64), "z_channels=64 must equal ch\\*ch_mult\\[-1\\]=32"),
    (dict(scorer="topk"), "scorer='topk'"),
])
def test_bad_configs_raise_before_compile(bad, match):
  with pytest.raises(ValueError, match=match):
    MQVAE(**{**TINY, **bad})


def test_models_import_without_tensorflow():
  code = "import sys, maskvq_jax.models; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("shape", [(2, 5, 6, 64), (3, 7, 64)])
def test_group_norm_equals_flax_two_pass(shape):
  """Our GroupNorm (per-channel sums first) = nn.GroupNorm(32, 1e-6, two-pass): values, params,
  gradients; bf16 output within bf16 rounding."""
  from maskvq_jax.models.layers import GroupNorm  # pylint: disable=import-outside-toplevel
  x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.5
  ref_mod = nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False)
  ours_mod = GroupNorm(num_groups=32, epsilon=1e-6)
  params = ref_mod.init(jax.random.key(1), x)
  assert jax.tree.structure(ours_mod.init(jax.random.key(1), x)) == jax.tree.structure(params)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  np.testing.assert_allclose(ours_mod.apply(params, x), ref_mod.apply(params, x), rtol=1e-5,
                             atol=1e-5)
  r = jax.random.normal(jax.random.key(3), shape)
  loss = lambda mod: jax.grad(lambda p, x: jnp.sum(jax.nn.silu(mod.apply(p, x)) * r),
                              argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(loss(ours_mod)), jax.tree.leaves(loss(ref_mod))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
  low = GroupNorm(num_groups=32, dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), ref_mod.apply(params, x), rtol=2e-2,
                             atol=2e-2)
  with pytest.raises(ValueError, match="num_groups"):
    GroupNorm(num_groups=32).init(jax.random.key(0), jnp.zeros((1, 4, 4, 48)))


def _group_norm_f64(x, scale, bias, dy, groups):
  """GroupNorm (two-pass variance, eps 1e-6) and its pull-back of `dy`, in float64 numpy."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  scale, bias = np.asarray(scale, np.float64), np.asarray(bias, np.float64)
  grouped = lambda t: t.reshape(t.shape[0], -1, groups, t.shape[-1] // groups)
  axes = (1, 3)
  xs = grouped(x)
  centred = xs - xs.mean(axis=axes, keepdims=True)
  inv = 1.0 / np.sqrt((centred ** 2).mean(axis=axes, keepdims=True) + 1e-6)
  xhat = (centred * inv).reshape(x.shape)
  d_xhat = grouped(dy * scale)
  xh = grouped(xhat)
  dx = inv * (d_xhat - d_xhat.mean(axis=axes, keepdims=True)
              - xh * (d_xhat * xh).mean(axis=axes, keepdims=True))
  sums = tuple(range(x.ndim - 1))
  return xhat * scale + bias, dx.reshape(x.shape), (dy * xhat).sum(sums), dy.sum(sums)


@pytest.mark.parametrize("shape,offset", [((2, 32, 32, 64), 0.0), ((2, 32, 32, 64), 30.0),
                                          ((8, 16, 16, 32), 0.5)])
def test_group_norm_matches_float64(shape, offset):
  """Values and gradients (x, scale, bias) of our GroupNorm within float32 rounding of a float64
  numpy GroupNorm, and no further from it than nn.GroupNorm(two-pass) is (x 1.5 + 1 ulp): a large
  common offset (activations far from zero mean) must not cost precision."""
  from maskvq_jax.models.layers import GroupNorm  # pylint: disable=import-outside-toplevel
  k = jax.random.split(jax.random.key(4), 4)
  x = offset + jax.random.normal(k[0], shape) + jax.random.normal(k[1], shape[-1:])
  dy = jax.random.normal(k[2], shape)
  c = shape[-1]
  params = {"params": {"scale": 1.0 + 0.1 * jax.random.normal(k[3], (c,)),
                       "bias": jnp.linspace(-0.5, 0.5, c)}}
  want = _group_norm_f64(x, params["params"]["scale"], params["params"]["bias"], dy, 32)

  def errors(mod):
    y, pull = jax.vjp(lambda p, x: mod.apply(p, x), params, x)
    gp, gx = pull(dy)
    got = (y, gx, gp["params"]["scale"], gp["params"]["bias"])
    return [float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())
            for a, b in zip(got, want)]

  ours = errors(GroupNorm(num_groups=32, epsilon=1e-6))
  flax_ref = errors(nn.GroupNorm(num_groups=32, epsilon=1e-6, use_fast_variance=False))
  for name, e, f in zip(("y", "dx", "dscale", "dbias"), ours, flax_ref):
    assert e < 2e-6, (name, e)
    assert e <= 1.5 * f + 1.2e-7, (name, e, f)
