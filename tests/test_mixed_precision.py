"""Mixed precision: `compute_dtype="auto"`, float32 islands, bf16 training tracking float32.

Tolerances (CPU, bf16 emulated by XLA):
  * stage 1 tiny, 3 steps from the same init and batches: the first step's L1 / total generator
    loss / gradient norm within 2 %, the commitment loss within 1 %; L1 and total loss of steps
    2-3 within 3 % (measured: <= 0.2 % at step 1, <= 1.1 % at steps 2-3; the GAN terms are
    chaotic at this size and are not compared).
  * stage 2 tiny, 3 steps: total / code / position losses within 1e-3 relative, gradient norm
    within 1 % (measured: 2e-5 and 1e-3).
  * golden MQ-VAE (official_small): with the encoder output fixed, the bf16 model's scores, kept
    positions and codes are the float32 ones (the islands); the whole bf16 model keeps the same
    regions except near ties and >= 90 % of the codes, every other code being the float32
    runner-up within 1 % of the distance (measured: 60 / 64, margins 0.3-0.8 %), because the bf16
    encoder output itself differs by ~2 % and the golden code margins are ~0.3 %.
"""
import functools
import importlib
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from maskvq_jax.core import loop
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.models import MQVAE
from maskvq_jax.models.stackformer import Stackformer
from maskvq_jax.parity import convert_mqvae as convert
from maskvq_jax.stage1 import trainer as trainer1
from maskvq_jax.stage2 import trainer as trainer2
from maskvq_jax.tools import check_golden
from stage1_testlib import enable_compile_cache, tiny as tiny1  # tests/ is on sys.path
from stage2_testlib import tiny as tiny2

enable_compile_cache()
CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common", "stackformer_common"))


# --------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("platform,want", [("cpu", "float32"), ("tpu", "bfloat16"),
                                           ("gpu", "bfloat16"), ("cuda", "bfloat16"),
                                           ("METAL", "float32")])
def test_auto_resolves_by_platform(platform, want):
  assert loop.resolve_compute_dtype("auto", platform) == want
  assert loop.resolve_compute_dtype("float32", "tpu") == "float32"  # explicit wins
  assert loop.resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"


def test_bad_compute_dtype_is_one_line_error():
  with pytest.raises(ValueError, match="compute_dtype='float16'; choose auto or one of"):
    loop.resolve_compute_dtype("float16")
  c = tiny1(compute_dtype="float16")
  with pytest.raises(ValueError, match="compute_dtype='float16'"):
    trainer1.validate_config(c, jax.device_count())


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_defaults_to_auto_and_accepts_overrides(name):
  c = importlib.import_module(f"configs.{name}").get_config(None)
  assert c.compute_dtype == "auto"
  c.lock()
  c.compute_dtype = "float32"  # an existing field: settable from the command line
  with pytest.raises(AttributeError):
    c.compute_dtype_typo = "bfloat16"


def test_run_meta_records_the_resolved_dtype():
  c = tiny1()
  mesh = sharding_lib.make_mesh(c.mesh)
  assert loop.run_meta(c, 0, mesh)["compute_dtype"] == "float32"  # "auto" on the CPU
  c.compute_dtype = "bfloat16"
  meta = loop.run_meta(c, 0, mesh)
  assert meta["compute_dtype"] == "bfloat16" and meta["config"]["compute_dtype"] == "bfloat16"


# --------------------------------------------------------------------------- islands
def _walk(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _walk(inner)


def test_stackformer_attention_logits_and_heads_are_float32_in_bf16():
  kw = dict(vocab_size=129, position_size=65, block_size=64, d_model=64, n_heads=4,
            code_layers=2, position_layers=2)
  b, s = 2, 12
  tok = jnp.zeros((b, s), jnp.int32)
  params = Stackformer(**kw).init(jax.random.key(0), tok, tok, tok)
  model = Stackformer(**kw, dtype=jnp.bfloat16)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, tok, tok, tok))(params).jaxpr
  dots = [e for e in _walk(jaxpr) if e.primitive.name == "dot_general"]
  scores = [e for e in dots if tuple(e.outvars[0].aval.shape) == (b, 4, s, s)]
  heads = [e for e in dots if tuple(e.outvars[0].aval.shape) in ((b, s, 129), (b, s, 65))]
  assert scores and len(heads) == 2
  for e in scores + heads:
    assert e.outvars[0].aval.dtype == jnp.float32, e
    assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars), e  # bf16 operands, f32 result
  # the rest of the model does compute in bf16
  assert sum(e.outvars[0].aval.dtype == jnp.bfloat16 for e in dots) >= 4 * 4


@pytest.fixture(scope="module")
def golden_mqvae(official_small):
  z = official_small
  kwargs = convert.mqvae_kwargs_from_official(check_golden.config_of(z)["vae_config"]["params"])
  sd = {k[3:]: v for k, v in z.items()
        if k.startswith("sd/") and k[3:].startswith(check_golden.STAGE1_ROOTS)}
  variables = convert.convert_state_dict(sd, convert.abstract_variables(MQVAE(**kwargs)),
                                         kwargs["scorer"])
  return z, kwargs, variables


def test_islands_keep_topk_and_codes_of_float32_on_golden_encoder_output(golden_mqvae):
  """Given the same encoder output, bf16 changes no score, kept position or code."""
  z, kwargs, variables = golden_mqvae
  h = jnp.asarray(np.transpose(z["out/h"], (0, 2, 3, 1)))

  def tokens(m, h):
    out = m.masker(h, False)
    _, _, codes = m.quantize(out["kept"], False)
    return out, codes

  out, codes = jax.jit(lambda v, h: MQVAE(**kwargs, dtype=jnp.bfloat16).apply(
      v, h, method=tokens))(variables, h)
  assert out["kept"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out["scores"]), z["out/scores"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["positions"]), z["out/topk_idx"])
  np.testing.assert_allclose(np.asarray(out["kept"]), z["out/quant_in"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(codes), z["out/codes"])


def test_bf16_model_agrees_with_float32_on_golden_inputs_except_near_ties(golden_mqvae):
  z, kwargs, variables = golden_mqvae
  x = jnp.asarray(np.transpose(z["in/x"], (0, 2, 3, 1)))
  run = lambda dt: jax.device_get(jax.jit(lambda v, x: MQVAE(**kwargs, dtype=dt).apply(
      v, x, train=False)[1])(variables, x))
  a, b = run(jnp.float32), run(jnp.bfloat16)
  np.testing.assert_array_equal(a["codes"], z["out/codes"])  # float32 is the golden run
  k = a["positions"].shape[1]
  # kept regions: the same set, except positions within the bf16 score error of the cut
  err = float(np.abs(a["scores"] - b["scores"]).max())
  assert err < 0.05, err
  for i in range(x.shape[0]):
    cut = np.sort(a["scores"][i])[::-1][k - 1:k + 1].mean()
    for p in set(a["positions"][i].tolist()) ^ set(b["positions"][i].tolist()):
      assert abs(a["scores"][i, p] - cut) <= 2 * err, (i, p)
  # codes at regions kept by both: equal, or the float32 runner-up within 1 % of the distance
  codebook = np.asarray(variables["vq_stats"]["quantize"]["codebook"])
  same = total = 0
  for i in range(x.shape[0]):
    where_b = {p: j for j, p in enumerate(b["positions"][i].tolist())}
    for j, p in enumerate(a["positions"][i].tolist()):
      if p not in where_b:
        continue
      total += 1
      ca, cb = a["codes"][i, j], b["codes"][i, where_b[p]]
      if ca == cb:
        same += 1
        continue
      d = np.sum(np.square(a["quant_in"][i, j][None] - codebook), -1)
      assert d[cb] - d[ca] <= 0.01 * d[ca], (i, p, ca, cb, d[cb] - d[ca], d[ca])
  assert total >= 60 and same >= 0.9 * total, (same, total)


# --------------------------------------------------------------------------- training
def _train(step_fn_of, batches):
  step, state = step_fn_of()
  out = []
  for batch in batches:
    state, m = step(state, batch, None)
    out.append(jax.device_get(m))
  return out, state


def _stage1(dtype):
  c = tiny1(compute_dtype=dtype, **{"optim.warmup_steps": 0})
  parts = trainer1.build(c)
  state = nn.meta.unbox(jax.jit(functools.partial(trainer1.create_state, parts=parts))(
      jax.random.PRNGKey(0)))
  return jax.jit(functools.partial(trainer1.train_step, parts=parts)), state


def test_stage1_bf16_losses_track_float32():
  batches = [{"image": jax.random.randint(jax.random.PRNGKey(10 + i), (8, 16, 16, 3), 0, 256)
              .astype(jnp.uint8)} for i in range(3)]
  f32, _ = _train(lambda: _stage1("float32"), batches)
  bf16, state = _train(lambda: _stage1("bfloat16"), batches)
  for key, tol in (("loss/l1", 0.02), ("loss/total_g", 0.02), ("grad_norm/g", 0.02),
                   ("loss/commit", 0.01)):
    np.testing.assert_allclose(bf16[0][key], f32[0][key], rtol=tol, err_msg=key)
  for a, b in zip(f32[1:], bf16[1:]):
    for key in ("loss/l1", "loss/total_g"):
      np.testing.assert_allclose(b[key], a[key], rtol=0.03, err_msg=key)
  leaves = jax.tree.leaves((state.params, state.opt_state, state.vq_stats, state.batch_stats))
  floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)


def _stage2(dtype, tok):
  c = trainer2.resolve_config(tiny2("/unused", "cond=none", compute_dtype=dtype,
                                    **{"optim.warmup_steps": 0}), tok)
  parts = trainer2.build(c, tok)
  state = nn.meta.unbox(jax.jit(functools.partial(trainer2.create_state, parts=parts))(
      jax.random.PRNGKey(0)))
  return jax.jit(functools.partial(trainer2.train_step, parts=parts)), state


def test_stage2_bf16_losses_track_float32():
  tok = MQVAE(**quickstart.get_config("tiny").model.to_dict())
  k, n = tok.num_tokens, tok.grid ** 2
  batches = []
  for i in range(3):
    r = np.random.default_rng(i)
    positions = np.stack([r.permutation(n)[:k] for _ in range(8)]).astype(np.int32)
    batches.append({"codes": r.integers(0, tok.codebook_size, (8, k)).astype(np.int32),
                    "positions": positions})
  f32, _ = _train(lambda: _stage2("float32", tok), batches)
  bf16, state = _train(lambda: _stage2("bfloat16", tok), batches)
  for a, b in zip(f32, bf16):
    for key in ("loss", "loss/code_loss", "loss/position_loss"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-3, err_msg=key)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-2)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.opt_state))
             if jnp.issubdtype(x.dtype, jnp.floating))
