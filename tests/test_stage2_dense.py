"""The dense raster GPT baseline through the stage-2 trainer (`config.trainer = "dense_gpt"`):
its loss against a cross-entropy computed here, train + resume + loader, evaluation sampling, and
the refusals (Stackformer on a dense tokenizer, dense GPT on an MQ-VAE, conditions).

Tiny sizes: a 16 px dense tokenizer (8 x 8 = 64 tokens, codebook 16), GPT d 32, 1 + 1 layers.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.data import runs as ckpt_loader
from maskvq_jax.evaluation import generate
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.stage2 import dense
from maskvq_jax.stage2 import sampling
from maskvq_jax.stage2 import trainer
from stage1_testlib import enable_compile_cache
from stage2_testlib import make_stage1_workdir, tiny

enable_compile_cache()


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
  return make_stage1_workdir(str(tmp_path_factory.mktemp("dense")), "dense")


@pytest.fixture(scope="module")
def masked_dir(tmp_path_factory):
  return make_stage1_workdir(str(tmp_path_factory.mktemp("masked")))


def _gpt(dense_dir, arg="", **kw):
  return tiny(dense_dir, "cond=none" + ("," + arg if arg else ""), trainer="dense_gpt", **kw)


def test_loss_is_the_raster_cross_entropy_whatever_the_token_order():
  model = DenseGPT(vocab_size=17, block_size=6, d_model=16, n_heads=2, n_layers=1)
  codes = jax.random.randint(jax.random.key(1), (3, 6), 0, 16)
  params = model.init(jax.random.key(0), codes)["params"]
  raster = jnp.broadcast_to(jnp.arange(6), (3, 6))
  loss, aux = dense.loss_and_metrics(model, params, codes, raster, jax.random.key(2), train=False)
  inputs = np.concatenate([np.full((3, 1), 16), np.asarray(codes)[:, :-1]], 1)
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(inputs)), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  want = -np.mean(np.take_along_axis(logp, np.asarray(codes)[..., None], -1))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(aux["code_loss"]) == float(loss)
  perm = np.stack([np.random.default_rng(i).permutation(6) for i in range(3)])  # tokens shuffled
  shuffled, _ = dense.loss_and_metrics(model, params, jnp.take_along_axis(codes, perm, 1),
                                       jnp.asarray(perm), jax.random.key(2), train=False)
  np.testing.assert_allclose(float(shuffled), float(loss), rtol=1e-6)


def test_train_resume_load_and_sample(dense_dir, tmp_path):
  wd = str(tmp_path / "gpt")
  out = trainer.train(_gpt(dense_dir, "steps=4", run_steps=2, **{"sample.every_steps": 2}), wd)
  assert (out["first_step"], out["last_step"]) == (0, 2)
  cfg = out["config"]
  assert (cfg.model.vocab_size, cfg.model.block_size) == (17, 64)  # 16 codes + sos; 8 x 8 tokens
  assert out["train"]["loss"] == out["train"]["loss/code_loss"] > 0
  rest = trainer.train(_gpt(dense_dir, "steps=4"), wd)
  assert (rest["first_step"], rest["last_step"], rest["finished"]) == (2, 4, True)

  model, variables, info = ckpt_loader.load_stage2(wd)
  assert isinstance(model, DenseGPT) and info["trainer"] == "dense_gpt"
  assert (model.n_layers, model.d_model, model.block_size) == (2, 32, 64)  # 1 + 1 layers
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(rest["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jax.device_get(b)))
  tok, tok_vars, _ = ckpt_loader.load_tokenizer(wd)
  scfg = sampling.SamplerConfig(steps=64, top_k=4)
  imgs, timing = generate.sample_images(model, variables, tok, tok_vars, scfg, num_images=10,
                                        batch_size=8, seed=0)
  assert imgs.shape == (10, 16, 16, 3) and imgs.dtype == np.uint8
  assert timing["tokens_per_image"] == 64 and timing["images_per_s"] > 0
  # the same draw decoded by hand: sample_dense codes in raster order through the tokenizer
  s = sampling.sample_dense(model, variables, jax.random.fold_in(jax.random.key(0), 0), scfg,
                            batch_size=8)
  ref = tok.apply(tok_vars, s.codes, s.positions, method="decode_codes")
  ref = np.asarray(jnp.round((jnp.clip(ref, -1, 1) + 1) * 127.5)).astype(np.uint8)
  assert np.abs(ref.astype(int) - imgs[:8].astype(int)).max() <= 1


def test_refusals_name_the_fix(dense_dir, masked_dir, tmp_path):
  with pytest.raises(ValueError, match=r"is a dense VQGAN .* config.trainer='dense_gpt'"):
    trainer.train(tiny(dense_dir, "cond=none"), str(tmp_path / "a"))
  with pytest.raises(ValueError, match=r"'dense_gpt' needs a dense tokenizer .* keeping 32 of 64"):
    trainer.train(_gpt(masked_dir), str(tmp_path / "b"))
  with pytest.raises(ValueError, match=r"GPT baseline .* is unconditional: model.n_classes=48"):
    trainer.train(tiny(dense_dir, trainer="dense_gpt"), str(tmp_path / "c"))
