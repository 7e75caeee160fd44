"""KV-cached Stackformer / dense sampler: official filters, no repeats, guidance, sharding, errors."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.stage2 import sampling
from maskvq_jax.parity.golden_stackformer import load_golden_stackformer
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer, split_sequences
from maskvq_jax.stage2.sampling import SamplerConfig

TINY = dict(vocab_size=17, position_size=13, block_size=12, d_model=32, n_heads=4, code_layers=1,
            position_layers=2)
RULES = (("batch", "data"), ("embed", None), ("heads", "model"), ("mlp", "model"))


def _params(model, seed=0, **kw):
  tok = jnp.zeros((kw["text"].shape[0] if kw else 2, 3), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(seed), tok, tok, tok, **kw))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def uncond():
  model = Stackformer(**TINY)
  return model, _params(model)


@pytest.fixture(scope="module")
def cls():
  model = Stackformer(**dict(TINY, vocab_size=16 + 3 + 1, n_classes=3, null_class=True))
  return model, _params(model, seed=3)


# ----- filters ----------------------------------------------------------------------------------
def _torch_style_filter(logits, top_k, top_p):
  """Straight numpy transcription of the official top_k_logits + softmax + top_p_logits."""
  logits = np.array(logits, np.float64)
  kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
  logits[logits < kth] = -np.inf
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  order = np.argsort(-probs, axis=-1, kind="stable")
  sorted_p = np.take_along_axis(probs, order, -1)
  remove = np.cumsum(sorted_p, -1) >= top_p
  remove[:, 1:] = remove[:, :-1].copy()
  remove[:, 0] = False
  np.put_along_axis(remove, order, remove.copy(), -1)
  probs[remove] = 0
  return probs / probs.sum(-1, keepdims=True)


def test_filters_match_official_rule():
  logits = jax.random.normal(jax.random.key(0), (6, 50)) * 3
  for top_k, top_p in [(10, 0.9), (50, 0.5), (3, 1.0), (1, 0.3)]:
    ours = sampling.filtered_probs(logits, top_k=top_k, top_p=top_p)
    np.testing.assert_allclose(ours, _torch_style_filter(logits, top_k, top_p), atol=1e-6)
  # The token whose cumulative probability crosses p is kept.
  probs = sampling.nucleus(jnp.array([[0.5, 0.3, 0.15, 0.05]]), 0.6)
  np.testing.assert_allclose(probs, [[0.625, 0.375, 0.0, 0.0]], rtol=1e-6)
  probs = sampling.nucleus(jnp.array([[0.5, 0.3, 0.15, 0.05]]), 0.5)
  np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0, 0.0]], rtol=1e-6)


def test_filters_match_golden(official_small):
  z = official_small
  model, params = load_golden_stackformer(z, "gpt")
  s = split_sequences(z["in/gpt/idx"], z["in/gpt/pos_idx"])
  code_logits, pos_logits = model.apply(params, s["codes_in"], s["pos_in"], s["next_codes"])
  blocked = np.zeros((4, model.vocab_size), bool)
  blocked[:, model.sos_token] = True
  probs = sampling.filtered_probs(code_logits[:, -1], blocked, top_k=10, top_p=0.9)
  np.testing.assert_allclose(probs, z["out/gpt/filter_value_probs"], atol=1e-6)
  blocked = np.zeros((4, model.position_size), bool)
  np.put_along_axis(blocked, z["in/gpt/pos_idx"][:, :16], True, axis=1)
  probs = sampling.filtered_probs(pos_logits[:, -1], blocked, top_k=5, top_p=0.8)
  np.testing.assert_allclose(probs, z["out/gpt/filter_position_probs"], atol=1e-6)


def test_greedy_matches_golden(official_small):
  z = official_small
  for section in ("gpt", "gpt_class"):
    model, params = load_golden_stackformer(z, section)
    labels = z["in/gpt_class/labels"] if section == "gpt_class" else None
    out = sampling.sample(model, params, jax.random.key(0), SamplerConfig(steps=16, greedy=True),
                          labels=labels, batch_size=4)
    np.testing.assert_array_equal(out.codes, z[f"out/{section}/greedy_codes"])
    np.testing.assert_array_equal(out.positions, z[f"out/{section}/greedy_positions"])


# ----- sampling rules ---------------------------------------------------------------------------
def test_no_repeated_positions_and_valid_codes(uncond):
  model, params = uncond
  n = model.num_positions
  cfg = SamplerConfig(steps=n, top_k=8, top_p=0.95, position_top_k=5, position_top_p=0.9,
                      temperature=1.5, position_temperature=2.0)
  out = sampling.sample(model, params, jax.random.key(0), cfg, batch_size=64)
  pos = np.asarray(out.positions)
  assert pos.shape == (64, n)
  np.testing.assert_array_equal(np.sort(pos, axis=1), np.tile(np.arange(n), (64, 1)))
  codes = np.asarray(out.codes)
  assert codes.min() >= 0 and codes.max() < model.codebook_size  # sos never sampled.
  assert len({tuple(r) for r in pos}) > 1  # Actually random.
  # Fewer steps than positions: still no repeats, never the sos position.
  out = sampling.sample(model, params, jax.random.key(1), SamplerConfig(steps=7), batch_size=64)
  pos = np.asarray(out.positions)
  assert all(len(set(r)) == 7 for r in pos) and pos.max() < n


def test_force_raster_order(uncond):
  model, params = uncond
  for steps in (5, model.num_positions):
    cfg = SamplerConfig(steps=steps, force_raster_order=True, position_temperature=3.0)
    pos = np.asarray(sampling.sample(model, params, jax.random.key(2), cfg,
                                     batch_size=16).positions)
    assert (np.diff(pos, axis=1) > 0).all() and pos.max() < model.num_positions


def test_sampled_logits_equal_teacher_forced_forward(cls):
  """Per-step logits of the cached sampler equal one full forward over the sampled sequence."""
  model, params = cls
  labels = jnp.arange(32) % 3
  out = sampling.sample(model, params, jax.random.key(5),
                        SamplerConfig(steps=8, top_k=5, temperature=3.0), labels=labels,
                        return_logits=True)
  codes = np.asarray(out.codes)
  assert codes.min() >= 0 and codes.max() < model.codebook_size  # No class / null tokens.
  idx = jnp.concatenate([labels[:, None], out.codes + model.code_offset], 1)
  pos_idx = jnp.concatenate([jnp.full((32, 1), model.sos_position), out.positions], 1)
  s = split_sequences(idx, pos_idx)
  code_logits, pos_logits = model.apply(params, s["codes_in"], s["pos_in"], s["next_codes"])
  np.testing.assert_allclose(out.code_logits, code_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.position_logits, pos_logits, rtol=1e-5, atol=1e-5)


def _assert_same_samples(a, b):
  """Same tokens; logits equal up to float rounding (the guided batch is twice as large, and
  on GPU a larger batch may pick different matmul kernels; on CPU they are bit-identical)."""
  np.testing.assert_array_equal(a.codes, b.codes)
  np.testing.assert_array_equal(a.positions, b.positions)
  np.testing.assert_allclose(a.code_logits, b.code_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(a.position_logits, b.position_logits, rtol=1e-5, atol=1e-5)


def test_guidance_scale_one_is_conditional(cls):
  model, params = cls
  labels = jnp.array([2, 0, 1])
  cfg = SamplerConfig(steps=5, greedy=True)
  plain = sampling.sample(model, params, jax.random.key(0), cfg, labels=labels,
                          return_logits=True)
  guided = sampling.sample(model, params, jax.random.key(0),
                           dataclasses.replace(cfg, guidance_scale=1.0), labels=labels,
                           return_logits=True)
  _assert_same_samples(plain, guided)
  # Scale 0 is the unconditional (null class) model.
  uncond = sampling.sample(model, params, jax.random.key(0),
                           dataclasses.replace(cfg, guidance_scale=0.0), labels=labels,
                           return_logits=True)
  ref = sampling.sample(model, params, jax.random.key(0), cfg,
                        labels=jnp.full((3,), model.null_class_token), return_logits=True)
  np.testing.assert_allclose(uncond.code_logits, ref.code_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(uncond.positions, ref.positions)
  np.testing.assert_allclose(sampling.apply_guidance(jnp.array(2.0), jnp.array(1.0), 3.0), 4.0)
  cond, unc = jax.random.normal(jax.random.key(1), (2, 5, 7)) * 10
  np.testing.assert_array_equal(sampling.apply_guidance(cond, unc, 1.0), cond)  # Bit-exact.


def test_text_guidance():
  model = Stackformer(**dict(TINY, text_dim=8))
  text = jax.random.normal(jax.random.key(0), (3, 4, 8))
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
  params = _params(model, text=text, text_mask=mask)
  plain = sampling.sample(model, params, jax.random.key(0), SamplerConfig(steps=4),
                          text=text, text_mask=mask, return_logits=True)
  guided = sampling.sample(model, params, jax.random.key(0),
                           SamplerConfig(steps=4, guidance_scale=1.0), text=text,
                           text_mask=mask, return_logits=True)
  _assert_same_samples(plain, guided)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_guided_logits_are_u_plus_s_times_c_minus_u(cls, kind):
  """Every per-step guided logit (codes and positions) equals u + s (c - u), with c and u from
  two separate teacher-forced forwards over the sampled sequence: conditional, and with the
  condition dropped (null class / null text)."""
  scale = 2.5
  if kind == "class":
    model, params = cls
    labels = jnp.array([2, 0, 1])
    cond = dict(labels=labels)
    first_c, first_u = labels, jnp.full((3,), model.null_class_token)
    fwd_c = fwd_u = {}
  else:
    model = Stackformer(**dict(TINY, text_dim=8))
    text = jax.random.normal(jax.random.key(0), (3, 4, 8))
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    params = _params(model, text=text, text_mask=mask)
    cond = dict(text=text, text_mask=mask)
    first_c = first_u = jnp.full((3,), model.sos_token)
    fwd_c = dict(text=text, text_mask=mask)
    fwd_u = dict(text=text, text_mask=mask, drop_cond=jnp.ones((3,), bool))
  out = sampling.sample(model, params, jax.random.key(4),
                        SamplerConfig(steps=6, top_k=5, temperature=2.0, guidance_scale=scale),
                        return_logits=True, **cond)
  pos_idx = jnp.concatenate([jnp.full((3, 1), model.sos_position), out.positions], 1)

  def forward(first, kw):
    idx = jnp.concatenate([first[:, None], out.codes + model.code_offset], 1)
    s = split_sequences(idx, pos_idx)
    return model.apply(params, s["codes_in"], s["pos_in"], s["next_codes"], **kw)

  (c_code, c_pos), (u_code, u_pos) = forward(first_c, fwd_c), forward(first_u, fwd_u)
  assert np.abs(c_code - u_code).max() > 0.1 and np.abs(c_pos - u_pos).max() > 0.1
  np.testing.assert_allclose(out.code_logits, u_code + scale * (c_code - u_code), rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(out.position_logits, u_pos + scale * (c_pos - u_pos), rtol=1e-5,
                             atol=1e-4)


def test_position_temperature_defaults_to_the_code_temperature(uncond):
  """Authors: one temperature divides both the code and the position logits."""
  model, params = uncond
  assert SamplerConfig(steps=3).position_temperature is None
  assert sampling.position_temperature(SamplerConfig(steps=3, temperature=2.5)) == 2.5
  assert sampling.position_temperature(SamplerConfig(steps=3, temperature=2.5,
                                                     position_temperature=0.5)) == 0.5
  n = model.num_positions

  def positions(**kw):
    cfg = SamplerConfig(steps=n, top_k=8, **kw)
    return np.asarray(sampling.sample(model, params, jax.random.key(9), cfg,
                                      batch_size=32).positions)

  shared = positions(temperature=3.0)
  np.testing.assert_array_equal(shared, positions(temperature=3.0, position_temperature=3.0))
  assert (shared != positions(temperature=3.0, position_temperature=1.0)).any()
  with pytest.raises(ValueError, match=r"position_temperature must be a finite number > 0, "
                                       r"got 0\.0"):
    sampling.sample(model, params, jax.random.key(0),
                    SamplerConfig(steps=3, position_temperature=0.0), batch_size=2)


def test_bf16_decode_weights(uncond):
  model, params = uncond
  cfg = SamplerConfig(steps=6, greedy=True)
  ref = sampling.sample(model, params, jax.random.key(0), cfg, batch_size=2, return_logits=True)
  out = sampling.sample(model, params, jax.random.key(0),
                        dataclasses.replace(cfg, weight_dtype="bfloat16"), batch_size=2,
                        return_logits=True)
  scale = float(jnp.abs(ref.code_logits[:, 0]).max())
  np.testing.assert_allclose(out.code_logits[:, 0], ref.code_logits[:, 0], atol=0.03 * scale)
  cast = sampling.decode_params(params, jnp.float32, "bfloat16")["params"]
  assert cast["code_blocks_0"]["mlp_fc"]["kernel"].dtype == jnp.bfloat16
  assert cast["code_blocks_0"]["mlp_fc"]["bias"].dtype == jnp.float32
  assert cast["value_emb"]["embedding"].dtype == jnp.float32


def test_bucket_stops():
  assert sampling.bucket_stops(64, 4) == [16, 32, 48, 64]
  assert sampling.bucket_stops(10, 4) == [3, 5, 8, 10]
  assert sampling.bucket_stops(3, 8) == [1, 2, 3]
  assert sampling.bucket_stops(7, 1) == [7]
  assert sampling.bucket_stops(16) == [16] and sampling.bucket_stops(40) == [14, 27, 40]
  assert sampling.bucket_stops(256) == [64, 128, 192, 256]


@pytest.mark.parametrize("buckets", [2, 5])
def test_cache_buckets_give_the_same_samples(cls, buckets):
  """Growing the KV cache per bucket changes nothing but the loop structure."""
  model, params = cls
  labels = jnp.arange(6) % 3
  cfg = SamplerConfig(steps=model.num_positions, top_k=6, top_p=0.9, position_top_k=5,
                      temperature=2.0, position_temperature=2.0, guidance_scale=1.5,
                      cache_buckets=1)
  ref = sampling.sample(model, params, jax.random.key(3), cfg, labels=labels, return_logits=True)
  out = sampling.sample(model, params, jax.random.key(3),
                        dataclasses.replace(cfg, cache_buckets=buckets), labels=labels,
                        return_logits=True)
  _assert_same_samples(out, ref)
  dense = DenseGPT(vocab_size=17, block_size=10, d_model=32, n_heads=4, n_layers=2)
  dparams = _params_dense(dense)
  cfg = SamplerConfig(steps=10, top_k=5, top_p=0.9, temperature=2.0, cache_buckets=1)
  ref = sampling.sample_dense(dense, dparams, jax.random.key(1), cfg, batch_size=4,
                              return_logits=True)
  out = sampling.sample_dense(dense, dparams, jax.random.key(1),
                              dataclasses.replace(cfg, cache_buckets=buckets), batch_size=4,
                              return_logits=True)
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_allclose(out.code_logits, ref.code_logits, rtol=1e-5, atol=1e-5)


def test_cumsum_matches_numpy():
  x = jax.random.uniform(jax.random.key(0), (3, 100))
  np.testing.assert_allclose(sampling._cumsum(x), np.cumsum(np.asarray(x, np.float64), -1),  # pylint: disable=protected-access
                             rtol=1e-6)
  x = jax.random.uniform(jax.random.key(1), (2, 300))  # Above the matmul limit: jnp.cumsum.
  np.testing.assert_allclose(sampling._cumsum(x), np.cumsum(np.asarray(x, np.float64), -1),  # pylint: disable=protected-access
                             rtol=1e-5)


def test_sharded_sampling_matches_single_device(cls):
  model, params = cls
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  labels = jnp.arange(8) % 3
  cfg = SamplerConfig(steps=6, top_k=10, top_p=0.9, position_top_k=4, guidance_scale=2.0,
                      cache_buckets=2)  # The padded caches keep their sharding.
  ref = sampling.sample(model, params, jax.random.key(7), cfg, labels=labels, return_logits=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    sharded = jax.device_put(labels, jax.sharding.NamedSharding(mesh,
                                                                jax.sharding.PartitionSpec("data")))
    out = sampling.sample(model, params, jax.random.key(7), cfg, labels=sharded,
                          return_logits=True)
  assert out.codes.sharding.spec[0] == "data"
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_array_equal(out.positions, ref.positions)
  np.testing.assert_allclose(out.code_logits, ref.code_logits, rtol=1e-5, atol=1e-5)


def _params_dense(model):
  return nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))


def test_dense_sampler():
  model = DenseGPT(vocab_size=17, block_size=10, d_model=32, n_heads=4, n_layers=2)
  params = _params_dense(model)
  out = sampling.sample_dense(model, params, jax.random.key(1),
                              SamplerConfig(steps=10, top_k=5, top_p=0.9), batch_size=4,
                              return_logits=True)
  assert out.codes.shape == (4, 10) and int(out.codes.max()) < 16
  np.testing.assert_array_equal(out.positions, np.tile(np.arange(10), (4, 1)))
  idx = jnp.concatenate([jnp.full((4, 1), model.sos_token), out.codes], 1)
  np.testing.assert_allclose(out.code_logits, model.apply(params, idx[:, :-1]), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="position_top_k=2 does not apply to the dense GPT"):
    sampling.sample_dense(model, params, jax.random.key(1), SamplerConfig(steps=3,
                                                                          position_top_k=2),
                          batch_size=2)


@pytest.mark.parametrize("cfg, kwargs, match", [
    (SamplerConfig(steps=0), {}, r"^steps must be an int in \[1, 12\], got 0$"),
    (SamplerConfig(steps=13), {}, r"^steps must be an int in \[1, 12\], got 13$"),  # 12 positions.
    (SamplerConfig(steps=3, top_k=0), {}, r"^top_k must be None or an int in \[1, 16\], got 0$"),
    (SamplerConfig(steps=3, top_k=17), {},
     r"^top_k must be None or an int in \[1, 16\], got 17$"),  # 16 codes.
    (SamplerConfig(steps=3, top_p=0.0), {}, r"^top_p must be None or in \(0, 1\], got 0\.0$"),
    (SamplerConfig(steps=3, top_p=1.5), {}, r"^top_p must be None or in \(0, 1\], got 1\.5$"),
    (SamplerConfig(steps=3, temperature=0.0), {},
     r"^temperature must be a finite number > 0, got 0\.0$"),
    (SamplerConfig(steps=3, position_temperature=-1.0), {},
     r"^position_temperature must be a finite number > 0, got -1\.0$"),
    (SamplerConfig(steps=3, position_top_k=13), {},
     r"^position_top_k must be None or an int in \[1, 12\], got 13$"),
    (SamplerConfig(steps=3, position_top_p=0.0), {},
     r"^position_top_p must be None or in \(0, 1\], got 0\.0$"),
    (SamplerConfig(steps=3, guidance_scale=2.0), {},
     r"^guidance_scale=2\.0 needs a model with a null condition \(n_classes > 0 and "
     r"null_class=True, or text_dim > 0\)$"),
    (SamplerConfig(steps=3), {"batch_size": None}, r"^cannot infer one batch size: got \[\]$"),
    (SamplerConfig(steps=3), {"labels": np.zeros(2, np.int32)},
     r"^labels given but the model has n_classes=0$"),
    (SamplerConfig(steps=3, weight_dtype="int8"), {},
     r"^weight_dtype must be None or a float dtype, got 'int8'$"),
    (SamplerConfig(steps=3, cache_buckets=0), {},
     r"^cache_buckets must be None or an int >= 1, got 0$"),
    (SamplerConfig(steps=3, cache_buckets=True), {},
     r"^cache_buckets must be None or an int >= 1, got True$"),
])
def test_bad_settings_raise(uncond, cfg, kwargs, match):
  model, params = uncond
  kwargs = {"batch_size": 2, **kwargs}
  with pytest.raises(ValueError, match=match):
    sampling.sample(model, params, jax.random.key(0), cfg, **kwargs)


def test_class_model_needs_labels(cls):
  model, params = cls
  with pytest.raises(ValueError, match=r"class-conditional sampling needs labels \[B\], got None"):
    sampling.sample(model, params, jax.random.key(0), SamplerConfig(steps=3), batch_size=2)
