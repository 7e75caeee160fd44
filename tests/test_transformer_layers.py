"""Scanned layer stacks and remat policies compute the same function as the unrolled blocks.

Every scanned model here runs on the unrolled model's weights converted with `stack_layers` /
`relayout`, so any difference is the scan itself: logits, gradients, KV-cached greedy decoding
(through `maskvq_jax.stage2.sampling`) and the golden official weights.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.stage2 import sampling
from maskvq_jax.parity.golden_stackformer import load_golden_stackformer
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer, make_sequences, split_sequences
from maskvq_jax.models import transformer
from maskvq_jax.models.transformer import relayout, run_layers, stack_layers, unstack_layers
from maskvq_jax.core.sharding import RULES

TINY = dict(vocab_size=17, position_size=13, block_size=12, d_model=32, n_heads=4, code_layers=3,
            position_layers=2)
VARIANTS = {
    "uncond": {},
    "class": dict(vocab_size=17 + 3 + 1, n_classes=3, null_class=True),
    "text": dict(text_dim=24),
}
DENSE = dict(vocab_size=17, block_size=10, d_model=32, n_heads=4, n_layers=3)


def _perturbed(params, seed):
  """Every leaf moved off its init, so zero-initialised tensors matter too."""
  leaves, tree = jax.tree.flatten(nn.meta.unbox(params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def _text(batch, dim=24):
  feats = jax.random.normal(jax.random.key(7), (batch, 5, dim))
  mask = jnp.arange(5)[None] < jnp.array([5, 2, 3, 4][:batch])[:, None]
  return feats, mask


def _stackformer(variant, **kw):
  """(unrolled model, its params, scanned model, the same params stacked, inputs)."""
  model = Stackformer(**{**TINY, **VARIANTS[variant], **kw})
  rng = np.random.default_rng(0)
  b, t = 3, 9
  codes = rng.integers(0, model.codebook_size, (b, t))
  positions = np.stack([rng.permutation(model.num_positions)[:t] for _ in range(b)])
  labels = np.array([0, 2, 1]) if model.n_classes else None
  s = split_sequences(*make_sequences(model, codes, positions, labels=labels))
  inputs = dict(codes_in=s["codes_in"], pos_in=s["pos_in"], next_codes=s["next_codes"])
  if model.text_dim:
    inputs["text"], inputs["text_mask"] = _text(b)
  params = _perturbed(model.init(jax.random.key(0), **inputs), 1)
  scanned = model.clone(scan_layers=True)
  return model, params, scanned, relayout(params, model.layer_stacks, scanned=True), inputs


def _dense():
  model = DenseGPT(**DENSE)
  codes = jax.random.randint(jax.random.key(2), (2, 10), 0, 16)
  params = _perturbed(model.init(jax.random.key(0), codes), 1)
  scanned = model.clone(scan_layers=True)
  return model, params, scanned, relayout(params, model.layer_stacks, scanned=True), codes


def _close(a, b, tol=1e-5):
  """Leaves equal to rtol `tol`, atol `tol` (scaled up for leaves above 10 in magnitude: float32
  sums in another order, e.g. jax 0.11's, move a leaf of ~25 by ~1e-5)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    y = np.asarray(y)
    atol = tol * max(1.0, float(np.abs(y).max(initial=0.0)) / 10)
    np.testing.assert_allclose(np.asarray(x), y, rtol=tol, atol=atol)


# ----- layout conversion --------------------------------------------------------------------
def test_stack_unstack_round_trip_and_errors():
  layer = lambda i: {"attn": {"kernel": np.full((2, 3), i, np.float32)}, "ln": {"scale": jnp.full((3,), i)}}
  params = {"blocks_0": layer(0), "blocks_1": layer(1), "blocks_2": layer(2), "head": {"w": np.ones(4)}}
  stacked = stack_layers(params, 3)
  assert sorted(stacked) == ["blocks", "head"]
  np.testing.assert_array_equal(stacked["blocks"]["attn"]["kernel"][:, 0, 0], [0, 1, 2])
  assert stacked["blocks"]["ln"]["scale"].shape == (3, 3)
  back = unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  _close(back, params, 0)
  # relayout: both directions, idempotent, through {"params": ...}.
  v = {"params": params}
  assert relayout(relayout(v, {"blocks": 3}, scanned=True), {"blocks": 3}, scanned=True) \
      .keys() == v.keys()
  _close(relayout(relayout(v, {"blocks": 3}, scanned=True), {"blocks": 3}, scanned=False), v, 0)
  _close(relayout(v, {"blocks": 3}, scanned=False), v, 0)
  with pytest.raises(ValueError, match=r"missing \['blocks_3'\]"):
    stack_layers(params, 4)
  with pytest.raises(ValueError, match=r"extra \['blocks_2'\]"):
    stack_layers(params, 2)
  with pytest.raises(ValueError, match="do not hold 4 layers"):
    relayout({"blocks": stacked["blocks"]}, {"blocks": 4}, scanned=False)


@pytest.mark.parametrize("variant", ["uncond", "text"])
def test_stacked_params_match_scanned_init(variant):
  """stack_layers of the unrolled tree = the scanned model's own tree (names, shapes, axes)."""
  model, params, scanned, stacked, inputs = _stackformer(variant)
  boxed = jax.eval_shape(scanned.init, jax.random.key(0), **inputs)
  shapes = lambda t: jax.tree.map(lambda x: x.shape, nn.meta.unbox(t))
  assert shapes(boxed) == shapes(stacked)
  kept = [k for k in params["params"] if not k.startswith(("code_blocks_", "position_blocks_"))]
  assert sorted(stacked["params"]) == sorted(kept + ["code_blocks", "position_blocks"])
  spec = nn.get_partition_spec(boxed)["params"]["code_blocks"]["mlp_fc"]["kernel"]
  assert tuple(spec) == ("layers", "embed", "mlp")
  # No sharding preset maps "layers": the layer axis is never split across devices.
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "model"))
  for rules in RULES.values():
    sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    for leaf in jax.tree.leaves(sharding["params"]["code_blocks"]):
      assert leaf.spec[0] is None, (rules, leaf.spec)


# ----- same function ------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["uncond", "class", "text"])
def test_scanned_stackformer_forward_and_grads(variant):
  model, params, scanned, stacked, inputs = _stackformer(variant)
  ref = model.apply(params, **inputs)
  _close(scanned.apply(stacked, **inputs), ref)

  def loss(m, p):  # train mode without dropout: deterministic, same for both layouts
    code, pos = m.apply(p, **inputs, train=True)
    return jnp.sum(code * jnp.cos(code)) + jnp.sum(pos * jnp.sin(pos))

  ref_l, ref_g = jax.value_and_grad(lambda p: loss(model, p))(params)
  l, g = jax.value_and_grad(lambda p: loss(scanned, p))(stacked)
  np.testing.assert_allclose(float(l), float(ref_l), rtol=1e-5)
  g = relayout(g, model.layer_stacks, scanned=False)
  assert jax.tree.structure(g) == jax.tree.structure(ref_g)
  _close(g, ref_g, 1e-4)


def test_scanned_dense_gpt_forward_and_grads():
  model, params, scanned, stacked, codes = _dense()
  _close(scanned.apply(stacked, codes), model.apply(params, codes))
  loss = lambda m, p: jnp.sum(jnp.tanh(m.apply(p, codes, train=True)))
  ref_g = jax.grad(lambda p: loss(model, p))(params)
  g = relayout(jax.grad(lambda p: loss(scanned, p))(stacked), model.layer_stacks, scanned=False)
  _close(g, ref_g, 1e-4)


# Stochastic sampling with every filter on: any difference in logits can change a draw.
SAMPLE = dict(temperature=1.3, top_k=9, top_p=0.9, position_top_k=6, position_top_p=0.95)


@pytest.mark.parametrize("variant", ["uncond", "class", "text"])
def test_scanned_stackformer_samples_equal_unrolled(variant):
  """Same weights, same rng: a scan_layers=True model samples exactly what the unrolled one does."""
  model, params, scanned, stacked, inputs = _stackformer(variant)
  kw = dict(batch_size=3)
  config = sampling.SamplerConfig(steps=8, cache_buckets=2, **SAMPLE)
  if variant == "class":
    kw = dict(labels=jnp.array([0, 2, 1]))
    config = sampling.SamplerConfig(steps=8, guidance_scale=2.0, **SAMPLE)
  if variant == "text":
    kw = dict(text=inputs["text"], text_mask=inputs["text_mask"])
  ref = sampling.sample(model, params, jax.random.key(3), config, return_logits=True, **kw)
  out = sampling.sample(scanned, stacked, jax.random.key(3), config, return_logits=True, **kw)
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_array_equal(out.positions, ref.positions)
  _close((out.code_logits, out.position_logits), (ref.code_logits, ref.position_logits), 0)
  other = sampling.sample(scanned, stacked, jax.random.key(4), config, **kw)
  assert not np.array_equal(other.codes, out.codes)  # the draws do depend on the rng
  # The cached steps equal the scanned model's own teacher-forced forward.
  if variant != "class":  # (guided logits are not one forward's logits)
    s = split_sequences(*make_sequences(scanned, out.codes, out.positions, sort=False))
    text = {k: inputs[k] for k in ("text", "text_mask") if k in inputs}
    code, pos = scanned.apply(stacked, s["codes_in"], s["pos_in"], s["next_codes"], **text)
    _close((code[:, :8], pos[:, :8]), (out.code_logits, out.position_logits))


def test_scanned_dense_gpt_samples_equal_unrolled():
  model, params, scanned, stacked, _ = _dense()
  config = sampling.SamplerConfig(steps=9, cache_buckets=3, temperature=1.3, top_k=9, top_p=0.9)
  ref = sampling.sample_dense(model, params, jax.random.key(0), config, batch_size=2,
                              return_logits=True)
  out = sampling.sample_dense(scanned, stacked, jax.random.key(0), config, batch_size=2,
                              return_logits=True)
  np.testing.assert_array_equal(out.codes, ref.codes)
  _close(out.code_logits, ref.code_logits, 0)
  inputs = jnp.concatenate([jnp.full((2, 1), model.sos_token), out.codes[:, :-1]], axis=1)
  _close(scanned.apply(stacked, inputs), out.code_logits)


def test_sampler_unrolls_scanned_models():
  model, params, scanned, stacked, _ = _stackformer("uncond")
  m, p = sampling.unrolled(scanned, stacked)
  assert m == model and jax.tree.structure(p) == jax.tree.structure(nn.meta.unbox(params))
  _close(p, params, 0)
  assert sampling.unrolled(model, params) == (model, params)


def test_scanned_decode_keeps_per_layer_caches():
  """The model's own cached step on stacked params (block by block) = the unrolled step."""
  model, params, scanned, stacked, _ = _stackformer("uncond")
  code, pos = scanned.init_cache(2, 4)
  assert len(code) == 3 and len(pos) == 2 and code[0]["k"].shape == (2, 4, 4, 8)
  run = lambda m, train: run_layers(m.code_blocks, jnp.zeros((2, 1, 32)), None, train=train,
                                    caches=code, index=0)
  x, new = scanned.apply(stacked, False, method=run)
  assert x.shape == (2, 1, 32) and len(new) == 3
  with pytest.raises(ValueError, match="eval mode only"):  # no dropout rng on this path
    scanned.apply(stacked, True, method=run)
  runs = [(model, params), (scanned, stacked)]
  caches = [m.init_cache(2, 4)[0] for m, _ in runs]
  for t, (c, p) in enumerate([(16, 12), (3, 5), (7, 0)]):  # sos, then two steps
    codes, positions = jnp.full((2, 1), c), jnp.full((2, 1), p)
    outs = []
    for i, (m, v) in enumerate(runs):
      logits, hidden, caches[i] = m.apply(v, caches[i], codes, positions, t,
                                          method=Stackformer.code_step)
      outs.append((logits, hidden))
    _close(outs[1], outs[0])
  _close(caches[1], caches[0])


def test_golden_weights_on_scanned_model(official_small):
  """The official checkpoint, converted then stacked, gives the golden logits and greedy codes."""
  z = official_small
  model, params = load_golden_stackformer(z, "gpt")
  scanned = model.clone(scan_layers=True)
  stacked = relayout(params, model.layer_stacks, scanned=True)
  s = split_sequences(z["in/gpt/idx"], z["in/gpt/pos_idx"])
  with jax.default_matmul_precision("highest"):
    code, pos = scanned.apply(stacked, s["codes_in"], s["pos_in"], s["next_codes"])
    steps, batch = z["out/gpt/greedy_codes"].shape[1], z["in/gpt/idx"].shape[0]
    out = sampling.sample(scanned, stacked, jax.random.key(0),
                          sampling.SamplerConfig(steps=steps, greedy=True), batch_size=batch)
  for ours, key in ((code, "value_logits"), (pos, "position_logits")):
    ref = z[f"out/gpt/{key}"]
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-4 * np.abs(ref).max(), key
  np.testing.assert_array_equal(out.codes, z["out/gpt/greedy_codes"])
  np.testing.assert_array_equal(out.positions, z["out/gpt/greedy_positions"])


# ----- remat --------------------------------------------------------------------------------
def _remat_policies(jaxpr) -> list:
  """The `policy` of every remat (jax.checkpoint) equation in `jaxpr` and its sub-jaxprs."""
  out = []
  for eqn in jaxpr.eqns:
    if "policy" in eqn.params and eqn.primitive.name in ("remat", "checkpoint", "remat2"):
      out.append(eqn.params["policy"])
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out += _remat_policies(inner)
  return out


@pytest.mark.parametrize("scan, policies", [
    (True, ("full", "dots_saveable", "dots_with_no_batch_dims_saveable")),
    (False, ("dots_with_no_batch_dims_saveable",)),  # unrolled "full" = remat=True: options test
])
def test_remat_policies_same_loss_and_grads(scan, policies):
  kw = dict(resid_dropout=0.1, embd_dropout=0.1, code_layers=2, scan_layers=scan)
  model, params, _, _, inputs = _stackformer("uncond", **kw)  # params in the model's own layout

  def loss(policy):
    m = model.clone(remat_policy=policy)
    def f(p):  # training mode: dropout on, same rng stream for every policy
      code, pos = m.apply(p, **inputs, train=True, rngs={"dropout": jax.random.key(1)})
      return jnp.sum(code * jnp.cos(code)) + jnp.sum(pos * jnp.sin(pos))
    return jax.value_and_grad(f)

  ref_l, ref_g = jax.jit(loss("none"))(params)
  assert _remat_policies(jax.make_jaxpr(loss("none"))(params).jaxpr) == []
  for policy in policies:
    # The blocks really are rematerialised, with the named policy (the policy objects themselves:
    # jax 0.11 and 0.12 print them differently).
    found = _remat_policies(jax.make_jaxpr(loss(policy))(params).jaxpr)
    assert found and all(p is transformer.REMAT_POLICIES[policy] for p in found), (policy, found)
    l, g = jax.jit(loss(policy))(params)
    np.testing.assert_allclose(float(l), float(ref_l), rtol=1e-6, err_msg=policy)
    _close(g, ref_g, 1e-5)


@pytest.mark.parametrize("cls, kw", [(Stackformer, TINY), (DenseGPT, DENSE)])
def test_bad_remat_policy(cls, kw):
  tok = jnp.zeros((1, 3), jnp.int32)
  args = (tok, tok, tok) if cls is Stackformer else (tok,)
  with pytest.raises(ValueError) as e:
    cls(**kw, remat_policy="dots").init(jax.random.key(0), *args)
  assert str(e.value) == ("remat_policy='dots'; choose one of ('none', 'full', 'dots_saveable', "
                          "'dots_with_no_batch_dims_saveable')")
