"""Stackformer: golden parity with the authors' model, causality, KV-cache exactness, sharding."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.parity.convert_stackformer import (stackformer_kwargs_from_official,
                                            stackformer_params_from_torch)
from maskvq_jax.parity.golden_stackformer import check_stackformer, load_golden_stackformer
from maskvq_jax.stage2.losses import stackformer_loss
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer, make_sequences, split_sequences
from maskvq_jax.models.text_encoder import ByteTextEncoder, FlaxCLIPTextEncoder, tokenize_bytes
from maskvq_jax.models.transformer import grow_kv_cache, init_kv_cache

TINY = dict(vocab_size=17, position_size=13, block_size=12, d_model=32, n_heads=4, code_layers=2,
            position_layers=1)
RULES = (("batch", "data"), ("embed", None), ("heads", "model"), ("mlp", "model"),
         ("vocab", None), ("length", None))


def _random_params(model, seed=0, text=None):
  """Init, then perturb every leaf so that zero-initialised tensors matter too."""
  tok = jnp.zeros((2, 3), jnp.int32)
  kw = {} if text is None else dict(text=text[0][:2], text_mask=text[1][:2])
  params = nn.meta.unbox(model.init(jax.random.key(seed), tok, tok, tok, **kw))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(tree, leaves)


def _random_sequence(model, batch, length, seed=0, labels=None):
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, model.codebook_size, (batch, length))
  positions = np.stack([rng.permutation(model.num_positions)[:length] for _ in range(batch)])
  return make_sequences(model, codes, positions, labels=labels)


def _text(batch, length=5, dim=24, seed=0):
  feats = jax.random.normal(jax.random.key(seed), (batch, length, dim))
  mask = jnp.arange(length)[None] < jnp.array([length, 2] * (batch // 2) + [3] * (batch % 2))[:, None]
  return feats, mask


# ----- golden ---------------------------------------------------------------------------------
@pytest.mark.parametrize("section", ["gpt", "gpt_class"])
def test_golden_parity(official_small, section):
  rows = check_stackformer(official_small, section)
  keys = {r.key for r in rows}
  assert keys == {k for k in official_small if k.startswith(f"out/{section}/")}
  bad = [r for r in rows if not r.passed]
  assert not bad, bad
  for r in rows:
    if "greedy_codes" in r.key or "greedy_positions" in r.key:
      assert r.max_abs == 0.0


def test_golden_loss_and_sequence_helpers(official_small):
  z = official_small
  model, params = load_golden_stackformer(z, "gpt_class")
  # make_sequences rebuilds the official layout from raster-sorted codes (any order in).
  idx, pos_idx = z["in/gpt_class/idx"], z["in/gpt_class/pos_idx"]
  perm = np.random.default_rng(0).permutation(idx.shape[1] - 1)
  codes = (idx[:, 1:] - model.n_classes)[:, perm]
  ours_idx, ours_pos = make_sequences(model, codes, pos_idx[:, 1:][:, perm],
                                      labels=z["in/gpt_class/labels"])
  np.testing.assert_array_equal(ours_idx, idx)
  np.testing.assert_array_equal(ours_pos, pos_idx)
  s = split_sequences(idx, pos_idx)
  cl, pl = model.apply(params, s["codes_in"], s["pos_in"], s["next_codes"])
  loss, aux = stackformer_loss(cl, pl, s["code_targets"], s["position_targets"], 0.5)
  ref = z["out/gpt_class/value_loss"] + 0.5 * z["out/gpt_class/position_loss"]
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_converter_rejects_unknown_and_missing_keys(official_small):
  sd = {k[3:]: v for k, v in official_small.items() if k.startswith("sd/transformer.")}
  params = stackformer_params_from_torch(sd, "transformer.")
  assert params["params"]["code_blocks_1"]["attn"]["query"]["kernel"].shape == (64, 64)
  bad = dict(sd)
  bad["transformer.extra.weight"] = np.zeros(3)
  del bad["transformer.value_head.1.weight"]
  with pytest.raises(ValueError, match=r"extra\.weight.*value_head\.1\.weight"):
    stackformer_params_from_torch(bad, "transformer.")
  with pytest.raises(ValueError, match=r"cannot convert Stackformer weights under prefix "
                                       r"'class_transformer\.': unknown keys \[\]; "
                                       r"missing keys \["):
    stackformer_params_from_torch(sd, "class_transformer.")
  kw = stackformer_kwargs_from_official(dict(vocab_size=2024, position_size=1025, block_size=1024,
                                             n_embd=1024, n_head=16, value_layer=12,
                                             position_layer=12, embd_pdrop=0.1, resid_pdrop=0.1,
                                             attn_pdrop=0.1, add_absolute_position=True,
                                             n_classes=1000))
  model = Stackformer(**kw)
  assert (model.codebook_size, model.sos_position, model.code_layers) == (1024, 1024, 12)
  with pytest.raises(ValueError, match=r"unknown official Stackformer config keys: \['bogus'\]"):
    stackformer_kwargs_from_official(dict(vocab_size=3, position_size=3, block_size=2, bogus=1))


def test_init_matches_official_scheme():
  model = Stackformer(**TINY)
  tok = jnp.zeros((1, 3), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), tok, tok, tok))["params"]
  np.testing.assert_array_equal(params["pos_emb"], 0.0)
  np.testing.assert_array_equal(params["code_blocks_0"]["ln1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["code_blocks_0"]["attn"]["key"]["bias"], 0.0)
  assert "bias" not in params["code_head"]
  w = params["code_blocks_0"]["mlp_fc"]["kernel"]
  assert w.shape == (32, 128) and 0.015 < float(jnp.std(w)) < 0.025
  n_params = sum(x.size for x in jax.tree.leaves(params))
  d, blocks = 32, 3  # 12 d^2 + 13 d per block, plus embeddings / heads.
  assert n_params == blocks * (12 * d * d + 13 * d) + 12 * d + 2 * (17 * d + 13 * d) + 4 * d


# ----- causality and the KV cache ---------------------------------------------------------------
def test_causality():
  model = Stackformer(**TINY)
  params = _random_params(model)
  idx, pos_idx = _random_sequence(model, 2, 10)
  s = split_sequences(idx, pos_idx)
  base = model.apply(params, s["codes_in"], s["pos_in"], s["next_codes"])
  for j in (1, 4, 8):
    ci = s["codes_in"].at[:, j].set((s["codes_in"][:, j] + 1) % model.codebook_size)
    pi = s["pos_in"].at[:, j].set((s["pos_in"][:, j] + 1) % model.num_positions)
    nc = s["next_codes"].at[:, j].set((s["next_codes"][:, j] + 1) % model.codebook_size)
    out = model.apply(params, ci, pi, nc)
    for a, b in zip(base, out):
      np.testing.assert_allclose(a[:, :j], b[:, :j], rtol=1e-6, atol=1e-6)
      assert np.abs(a[:, j] - b[:, j]).max() > 1e-3
  # The next code only reaches the position logits: the code head is blind to it.
  nc = s["next_codes"].at[:, 3].set((s["next_codes"][:, 3] + 1) % model.codebook_size)
  cl, pl = model.apply(params, s["codes_in"], s["pos_in"], nc)
  np.testing.assert_allclose(cl, base[0], rtol=1e-6, atol=1e-6)
  assert np.abs(pl[:, 3] - base[1][:, 3]).max() > 1e-3


@pytest.mark.parametrize("variant", ["uncond", "class", "text"])
def test_cached_decode_equals_full_forward(variant):
  kw = dict(TINY)
  text = labels = None
  if variant == "class":
    kw.update(vocab_size=17 + 3 + 1, n_classes=3, null_class=True)
    labels = np.array([0, 2, 1])
  if variant == "text":
    kw.update(text_dim=24)
    text = _text(3)
  model = Stackformer(**kw)
  params = _random_params(model, text=text)
  idx, pos_idx = _random_sequence(model, 3, 9, labels=labels)
  s = split_sequences(idx, pos_idx)
  tkw = {} if text is None else dict(text=text[0], text_mask=text[1])
  full_code, full_pos = model.apply(params, s["codes_in"], s["pos_in"], s["next_codes"], **tkw)
  code_cache, pos_cache = model.init_cache(3, 9)
  ctx = (None, None)
  if text is not None:
    ctx = model.apply(params, *text, method=Stackformer.encode_context)
  step_code = jax.jit(lambda c, a, b, t: model.apply(params, c, a, b, t, ctx[0],
                                                     method=Stackformer.code_step))
  step_pos = jax.jit(lambda c, h, n, t: model.apply(params, c, h, n, t, ctx[1],
                                                    method=Stackformer.position_step))
  for t in range(9):
    cl, h, code_cache = step_code(code_cache, s["codes_in"][:, t:t + 1], s["pos_in"][:, t:t + 1],
                                  t)
    pl, pos_cache = step_pos(pos_cache, h, s["next_codes"][:, t:t + 1], t)
    np.testing.assert_allclose(cl[:, 0], full_code[:, t], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pl[:, 0], full_pos[:, t], rtol=1e-5, atol=1e-5)
  # Multi-token prefill through the same path.
  code_cache, _ = model.init_cache(3, 9)
  cl, _, _ = model.apply(params, code_cache, s["codes_in"], s["pos_in"], 0, ctx[0],
                         method=Stackformer.code_step)
  np.testing.assert_allclose(cl, full_code, rtol=1e-5, atol=1e-5)


def test_dense_gpt_cache_and_causality():
  model = DenseGPT(vocab_size=17, block_size=10, d_model=32, n_heads=4, n_layers=2)
  tok = jnp.zeros((1, 3), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), tok))
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)
  codes = jax.random.randint(jax.random.key(2), (2, 10), 0, 16)
  full = model.apply(params, codes)
  cache = model.init_cache(2, 10)
  for t in range(10):
    logits, cache = model.apply(params, cache, codes[:, t:t + 1], t, method=DenseGPT.step)
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
  changed = model.apply(params, codes.at[:, 6].set((codes[:, 6] + 1) % 16))
  np.testing.assert_allclose(changed[:, :6], full[:, :6], rtol=1e-6, atol=1e-6)


# ----- conditioning -------------------------------------------------------------------------
def test_condition_dropout():
  kw = dict(TINY, vocab_size=17 + 3 + 1, n_classes=3, null_class=True, cond_dropout=1.0)
  model = Stackformer(**kw)
  params = _random_params(model)
  idx, pos_idx = _random_sequence(model, 2, 6, labels=np.array([0, 1]))
  s = split_sequences(idx, pos_idx)
  args = (s["codes_in"], s["pos_in"], s["next_codes"])
  dropped = model.apply(params, *args, train=True, rngs={"dropout": jax.random.key(0)})
  null_first = s["codes_in"].at[:, 0].set(model.null_class_token)
  ref = model.apply(params, null_first, s["pos_in"], s["next_codes"])
  np.testing.assert_allclose(dropped[0], ref[0], rtol=1e-6)
  explicit = model.apply(params, *args, drop_cond=jnp.array([True, True]))
  np.testing.assert_allclose(explicit[1], ref[1], rtol=1e-6)
  kept = model.apply(params, *args, drop_cond=jnp.array([False, False]))
  np.testing.assert_allclose(kept[0], model.apply(params, *args)[0], rtol=1e-6)


def test_text_conditioning_and_null_text():
  model = Stackformer(**dict(TINY, text_dim=24, cond_dropout=0.5))
  text = _text(2)
  params = _random_params(model, text=text)
  idx, pos_idx = _random_sequence(model, 2, 6)
  s = split_sequences(idx, pos_idx)
  args = (s["codes_in"], s["pos_in"], s["next_codes"])
  a = model.apply(params, *args, text=text[0], text_mask=text[1])
  b = model.apply(params, *args, text=text[0] + 1.0, text_mask=text[1])
  assert np.abs(a[0] - b[0]).max() > 1e-4  # The text matters...
  padded = text[0].at[1, 3:].set(7.0)  # ...but padded text tokens do not.
  c = model.apply(params, *args, text=padded, text_mask=text[1])
  np.testing.assert_allclose(c[0], a[0], rtol=1e-6, atol=1e-6)
  d1 = model.apply(params, *args, text=text[0], text_mask=text[1], drop_cond=jnp.array([True] * 2))
  d2 = model.apply(params, *args, text=text[0] + 1.0, text_mask=text[1],
                   drop_cond=jnp.array([True] * 2))
  np.testing.assert_allclose(d1[0], d2[0], rtol=1e-6)


def test_byte_text_encoder():
  ids, mask = tokenize_bytes(["a cat", "", "ünïcode and a long caption"], max_len=12)
  assert ids.shape == (3, 12) and mask[:, 0].all() and mask.sum(1).tolist() == [6, 1, 12]
  enc = ByteTextEncoder(max_len=12, d_model=24, n_heads=2, n_layers=1)
  params = enc.init(jax.random.key(0), ids, mask)
  feats, m = enc.apply(params, ids, mask)
  assert feats.shape == (3, 12, 24) and np.isfinite(feats).all()
  ids2 = ids.copy()
  ids2[0, 8:] = 99  # Padding content does not leak into real tokens.
  feats2, _ = enc.apply(params, ids2, mask)
  np.testing.assert_allclose(feats2[0, :6], feats[0, :6], rtol=1e-6, atol=1e-6)
  # Features plug into a text-conditional Stackformer.
  model = Stackformer(**dict(TINY, text_dim=24))
  sp = _random_params(model, text=(feats, m))
  idx, pos_idx = _random_sequence(model, 3, 4)
  s = split_sequences(idx, pos_idx)
  out = model.apply(sp, s["codes_in"], s["pos_in"], s["next_codes"], text=feats, text_mask=m)
  assert out[0].shape == (3, 4, 17)


def test_clip_adapter_is_lazy():
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("transformers") is not None:
    pytest.skip("transformers installed; the adapter needs a local checkpoint to test")
  with pytest.raises(ImportError, match="FlaxCLIPTextEncoder needs the optional package "
                                        "`transformers`"):
    FlaxCLIPTextEncoder("/nonexistent")


# ----- sharding ---------------------------------------------------------------------------------
def test_sharded_forward_matches_single_device():
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  model = Stackformer(**dict(TINY, n_heads=2))
  tok = jnp.zeros((8, 6), jnp.int32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    abstract = jax.eval_shape(model.init, jax.random.key(0), tok, tok, tok)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
  spec = shardings["params"]["code_blocks_0"]["mlp_fc"]["kernel"].spec
  assert tuple(spec) == (None, "model")
  params = _random_params(model)
  idx, pos_idx = _random_sequence(model, 8, 6)
  s = split_sequences(idx, pos_idx)
  args = (s["codes_in"], s["pos_in"], s["next_codes"])
  ref = jax.jit(model.apply)(params, *args)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    sharded_params = jax.device_put(params, nn.meta.unbox(shardings))
    sharded_args = [jax.device_put(a, batch) for a in args]
    out = jax.jit(model.apply)(sharded_params, *sharded_args)
  assert out[0].sharding.spec[0] == "data"
  for a, b in zip(ref, out):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_grow_kv_cache():
  cache = init_kv_cache(2, 3, 4, 2, 5)
  cache[1]["v"] = cache[1]["v"].at[:, :, 2].set(7.0)
  grown = grow_kv_cache(cache, 6)
  assert grown[0]["k"].shape == (3, 2, 6, 5)
  np.testing.assert_array_equal(grown[1]["v"][:, :, :4], cache[1]["v"])
  np.testing.assert_array_equal(grown[1]["v"][:, :, 4:], 0.0)
  assert grow_kv_cache(cache, 4)[0]["k"].shape == (3, 2, 4, 5)
  with pytest.raises(ValueError, match="cannot shrink a KV cache of length 4 to 3"):
    grow_kv_cache(cache, 3)
