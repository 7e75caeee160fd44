"""attention_impl="pallas" / "auto": the Pallas splash-attention kernel against the XLA attention.

On the CPU the kernel itself runs through Pallas' TPU interpreter (`pallas_attention.INTERPRET`):
the same kernel code as on a TPU, compared with an independent einsum attention (causal, lengths
that need padding, forward and gradients), directly, inside the Stackformer, and under a 2-device
mesh (the shard_map path). Without the interpreter, "pallas" off TPU is the XLA attention (same
numbers) with one logged note; KV-cached sampling is unchanged; bad values fail with one line.
"""
import logging
import os
import sys

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

from configs import quickstart_stage2
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.models import pallas_attention
from maskvq_jax.models import transformer
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer
from maskvq_jax.stage2 import sampling
from maskvq_jax.stage2 import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(vocab_size=33, position_size=17, block_size=24, d_model=32, n_heads=2, code_layers=1,
          position_layers=1)


@pytest.fixture
def interpret(monkeypatch):
  monkeypatch.setattr(pallas_attention, "INTERPRET", True)


def _reference(q, k, v, scale):
  """Causal softmax attention in float64 numpy ([B, H, L, Dh])."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  s = np.einsum("bhqd,bhkd->bhqk", q, k) * scale
  n = q.shape[2]
  s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bhqk,bhkd->bhqd", w / w.sum(-1, keepdims=True), v)


def _qkv(b, h, n, d, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(b, h, n, d)), jnp.float32) for _ in range(3))


def _batch(n=2, t=9):
  rng = np.random.default_rng(0)
  idx = jnp.asarray(rng.integers(0, 32, (n, t + 1)))
  pos = jnp.asarray(np.sort(rng.integers(0, 16, (n, t + 1)), axis=1))
  return idx[:, :-1], pos[:, :-1], idx[:, 1:]


# ----- sizes, kernel ------------------------------------------------------------------------------
def test_padding_and_block_sizes():
  assert [pallas_attention.padded_length(n) for n in (1, 128, 129, 300)] == [128, 128, 256, 384]
  assert [pallas_attention.block_size(n) for n in (128, 256, 384, 512, 1024, 1152)] == [
      128, 256, 128, 512, 512, 128]


@pytest.mark.parametrize("n", [100, 200])  # padded to 128 (block 128) / 256 (block 256)
def test_kernel_matches_reference_forward_and_gradients(interpret, n):
  q, k, v = _qkv(1, 2, n, 32)
  scale = 1 / np.sqrt(32)
  attn = lambda q, k, v: pallas_attention.causal_attention(q, k, v, scale=scale,
                                                           names=transformer.CACHE_NAMES)
  assert pallas_attention.unavailable(q.shape, transformer.CACHE_NAMES) is None
  out = jax.jit(attn)(q, k, v)
  np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, scale), rtol=1e-4, atol=1e-5)

  def xla(q, k, v):  # independent: plain masked softmax in float32
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale
    s = jnp.where(jnp.tril(jnp.ones((n, n), bool)), s, -jnp.inf)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, -1), v)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  got = jax.jit(jax.grad(loss(attn), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


# ----- inside the models --------------------------------------------------------------------------
def _loss_and_grads(model, params, batch):
  def loss(p):
    code, pos = model.apply(p, *batch, train=True, rngs={"dropout": jax.random.key(1)})
    return jnp.sum(code * jnp.cos(code)) + jnp.sum(pos * jnp.sin(pos))
  return jax.jit(jax.value_and_grad(loss))(params)


def test_stackformer_with_the_kernel_matches_xla(interpret, caplog):
  batch = _batch()
  ref = Stackformer(**KW)
  params = ref.init(jax.random.key(0), *batch)
  model = Stackformer(**KW, attention_impl="pallas", resid_dropout=0.1)
  transformer._FALLBACK_NOTES.clear()  # pylint: disable=protected-access
  calls = []
  real = pallas_attention.causal_attention
  with caplog.at_level(logging.WARNING), pytest.MonkeyPatch.context() as mp:
    mp.setattr(pallas_attention, "causal_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    l, g = _loss_and_grads(model, params, batch)
  assert len(calls) == 2 and not caplog.records  # both transformers' self-attention, no fallback
  rl, rg = _loss_and_grads(ref.clone(resid_dropout=0.1), params, batch)
  np.testing.assert_allclose(float(l), float(rl), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(rg)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_dense_gpt_with_the_kernel_matches_xla(interpret):
  codes = _batch()[0]
  kw = dict(vocab_size=33, block_size=16, d_model=32, n_heads=2, n_layers=2)
  params = DenseGPT(**kw).init(jax.random.key(0), codes)
  want = DenseGPT(**kw).apply(params, codes)
  got = jax.jit(DenseGPT(**kw, attention_impl="pallas").apply)(params, codes)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_kernel_under_a_two_device_mesh(interpret):
  """The trainers' setting: jax.set_mesh + logical rules; the kernel runs per batch shard."""
  mesh = sharding_lib.make_mesh((("data", 2),), jax.devices()[:2])
  rules = sharding_lib.data_axis_rules()
  q, k, v = _qkv(4, 2, 40, 16, seed=3)
  scale = 0.25
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    assert pallas_attention.unavailable(q.shape, transformer.CACHE_NAMES) is None
    out = jax.jit(lambda q, k, v: pallas_attention.causal_attention(
        q, k, v, scale=scale, names=transformer.CACHE_NAMES))(q, k, v)
    # reasons to fall back: a batch the shards do not divide, a sharded length
    assert pallas_attention.unavailable((3, 2, 40, 16), transformer.CACHE_NAMES) == (
        "batch=3 does not divide its 2 shards (mesh axes ('data',))")
  np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, scale), rtol=1e-4, atol=1e-5)
  with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", None), ("length", "data"))):
    assert pallas_attention.unavailable(q.shape, transformer.CACHE_NAMES) == (
        "length is sharded over mesh axes ('data',)")


# ----- off TPU: the XLA attention ---------------------------------------------------------------
def test_pallas_falls_back_to_xla_off_tpu_with_one_note(caplog):
  assert jax.default_backend() != "tpu"
  batch = _batch()
  model = Stackformer(**{**KW, "code_layers": 2, "position_layers": 2})
  params = model.init(jax.random.key(0), *batch)
  want = model.apply(params, *batch)
  transformer._FALLBACK_NOTES.clear()  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    got = model.clone(attention_impl="pallas").apply(params, *batch)
    auto = model.clone(attention_impl="auto").apply(params, *batch)
  for a, b, c in zip(got, auto, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))  # the same computation
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
  notes = [r.getMessage() for r in caplog.records]
  assert notes == [f"attention_impl='pallas' unavailable here (the Pallas splash kernel runs on "
                   f"TPU only, this backend is {jax.default_backend()}); using XLA attention"]


def test_auto_per_backend_and_bad_values():
  assert [transformer.resolve_attention_impl("auto", b) for b in ("gpu", "tpu", "cpu")] == [
      "cudnn", "pallas", "xla"]
  assert transformer.resolve_attention_impl("pallas", "cpu") == "pallas"
  assert transformer.benchmarked_attention_impls("tpu") == ("xla", "dot_product", "cudnn",
                                                            "pallas")
  with pytest.raises(ValueError, match=r"^attention_impl='splash'; choose one of \('xla', "
                                       r"'dot_product', 'cudnn', 'pallas', 'auto'\)$"):
    transformer.resolve_attention_impl("splash")
  with pytest.raises(ValueError, match=r"^attention_impl='splash'; choose one of"):
    Stackformer(**KW, attention_impl="splash").init(jax.random.key(0), *_batch())
  with pytest.raises(ValueError, match=r"^model\.attention_impl='splash'; choose one of xla, "
                                       r"dot_product, cudnn, pallas, auto$"):
    trainer.check_execution_options({"attention_impl": "splash"})


@pytest.mark.parametrize("value", ["pallas", "auto"])
def test_command_line_sets_it(monkeypatch, value):
  argv = ["prog", f"--config={ROOT}/configs/quickstart_stage2.py:tiny",
          f"--config.model.attention_impl={value}"]
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv)
  fv(argv)
  assert fv.config.model.attention_impl == value
  trainer.check_execution_options(fv.config.model)
  assert Stackformer(**trainer._model_kwargs(fv.config)).attention_impl == value  # pylint: disable=protected-access
  assert quickstart_stage2.get_config("tiny").model.attention_impl == "xla"  # default unchanged


# ----- KV-cached sampling keeps the XLA attention -----------------------------------------------
def test_sampling_unchanged(interpret):
  model = Stackformer(**KW)
  params = model.init(jax.random.key(0), *_batch())
  cfg = sampling.SamplerConfig(steps=5, top_k=4)
  calls = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pallas_attention, "causal_attention", lambda *a, **k: calls.append(1))
    out = sampling.sample(model.clone(attention_impl="pallas"), params, jax.random.key(2), cfg,
                          batch_size=2)
  ref = sampling.sample(model, params, jax.random.key(2), cfg, batch_size=2)
  assert not calls  # the decode steps attend over the cache with an explicit mask: XLA attention
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_array_equal(out.positions, ref.positions)
