"""Stage-2 trainer: smoke + resume from a tiny stage-1 workdir, tokenizer mismatches, optimizer.

Tiny sizes (16 px tokenizer: K = 32 of 64 regions, codebook 16; Stackformer d 32, 1 + 1 layers)
over 8 simulated CPU devices.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.core import checkpointing
from maskvq_jax.data import runs as ckpt_loader
from maskvq_jax.stage2 import trainer
from stage1_testlib import enable_compile_cache
from stage2_testlib import make_stage1_workdir, tiny

enable_compile_cache()


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
  return make_stage1_workdir(str(tmp_path_factory.mktemp("stage1")))


def test_train_checkpoint_resume_and_loader(stage1_dir, tmp_path):
  wd = str(tmp_path / "s2")
  c = tiny(stage1_dir, "steps=4", run_steps=2, **{"sample.every_steps": 2})
  out = trainer.train(c, wd)
  assert (out["first_step"], out["last_step"], out["finished"]) == (0, 2, False)
  assert np.isfinite(out["train"]["loss"]) and out["train"]["loss/code_loss"] > 0
  # class model on a 16-code tokenizer: 48 classes + 16 codes + null; 64 regions + sos
  cfg = out["config"]
  assert (cfg.model.vocab_size, cfg.model.position_size, cfg.model.block_size) == (65, 65, 64)
  assert any(f.startswith("samples_") and f.endswith(".png") for f in os.listdir(f"{wd}/images"))
  meta = checkpointing.read_meta(f"{wd}/checkpoints")
  assert meta["config"]["trainer"] == "stackformer"
  assert meta["config"]["tokenizer"] == os.path.abspath(stage1_dir)
  assert meta["tokenizer"]["tokens_per_image"] == 32

  rest = trainer.train(tiny(stage1_dir, "steps=4"), wd)  # resumes: no step redone
  assert (rest["first_step"], rest["last_step"], rest["finished"]) == (2, 4, True)
  assert checkpointing.Checkpointer(f"{wd}/checkpoints", save_every=1).all_steps()[-1] == 4
  again = trainer.train(tiny(stage1_dir, "steps=4"), wd)
  assert (again["first_step"], again["last_step"]) == (4, 4)

  # the evaluation loader reads the layout back (params equal the trained state's)
  model, variables, info = ckpt_loader.load_stage2(wd)
  assert info["step"] == 4 and info["tokenizer"] == os.path.abspath(stage1_dir)
  assert model.n_classes == 48 and model.null_class and model.block_size == 64
  for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(again["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jax.device_get(b)))


def test_resume_matches_straight_run(stage1_dir, tmp_path):
  c = lambda **kw: tiny(stage1_dir, "cond=none,steps=3", **kw)
  straight = trainer.train(c(), str(tmp_path / "a"))
  trainer.train(c(run_steps=1), str(tmp_path / "b"))
  rest = trainer.train(c(), str(tmp_path / "b"))
  assert rest["first_step"] == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(straight["state"])),
                  jax.tree.leaves(jax.device_get(rest["state"]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("override,match", [
    ({"model.vocab_size": 1025}, r"model.vocab_size=1025 does not match tokenizer .*needs 65"),
    ({"model.position_size": 1025}, r"model.position_size=1025 does not match .*needs 65"),
    ({"model.block_size": 4}, r"model.block_size=4 is shorter than the K=32 tokens"),
    ({"expect.keep_ratio": 0.25}, r"config.expect.keep_ratio=0.25 but tokenizer .* keep_ratio=0.5"),
    ({"expect.codebook_size": 1024}, r"expect.codebook_size=1024 .* codebook_size=16"),
    ({"input.res": 256}, r"input.res=256 but tokenizer .* encodes 16px"),
])
def test_mismatched_tokenizer_is_a_clear_error(stage1_dir, tmp_path, override, match):
  with pytest.raises(ValueError, match=match):
    trainer.train(tiny(stage1_dir, **override), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing written


def test_workdir_trained_on_another_tokenizer_is_refused(stage1_dir, tmp_path):
  wd = str(tmp_path / "s2")
  trainer.train(tiny(stage1_dir, "steps=2"), wd)
  other = make_stage1_workdir(str(tmp_path / "other"), "keep=0.75")  # K = 48
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"step 2 .* another configuration: tokenizer.tokens_per_image: "
                           r"checkpoint 32 vs config 48; tokenizer.keep_ratio: checkpoint 0.5 vs "
                           r"config 0.75\. Nothing was moved"):
    trainer.train(tiny(other, "steps=4"), wd)
  assert checkpointing.Checkpointer(f"{wd}/checkpoints", save_every=1).all_steps() == [1, 2]
  # the same guard covers config.resume, and the Stackformer's own shape (width)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"another configuration: model.d_model: checkpoint 32 vs config 64\. "
                           r"Nothing was moved or deleted\. config.resume must name"):
    trainer.train(tiny(stage1_dir, "steps=4", resume=wd, **{"model.d_model": 64}),
                  str(tmp_path / "new"))
  assert checkpointing.Checkpointer(f"{wd}/checkpoints", save_every=1).all_steps() == [1, 2]


def test_missing_tokenizer_and_bad_configs(tmp_path, stage1_dir):
  with pytest.raises(ValueError, match="config.tokenizer is empty"):
    trainer.train(tiny(""), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    trainer.train(tiny(str(tmp_path / "nope")), str(tmp_path))
  tok, _, _ = trainer.load_tokenizer(tiny(stage1_dir))
  c = trainer.resolve_config(tiny(stage1_dir, **{"input.batch_size": 12}), tok)
  with pytest.raises(ValueError, match="input.batch_size=12 is not divisible .* choose a multiple "
                                       "of 8, e.g. --config.input.batch_size=8 or 16"):
    trainer.validate_config(c, 8, tok.num_tokens)
  for what in ("sample.num", "eval.batch_size"):  # other counts are padded, only < 1 is refused
    trainer.validate_config(trainer.resolve_config(tiny(stage1_dir, **{what: 3}), tok), 8,
                            tok.num_tokens)
    with pytest.raises(ValueError, match=f"{what}=0 must be >= 1"):
      trainer.validate_config(trainer.resolve_config(tiny(stage1_dir, **{what: 0}), tok), 8,
                              tok.num_tokens)
  few = {"eval.every_steps": 2, "eval.batch_size": 7, "eval.num_examples": 3}
  with pytest.raises(ValueError, match="eval.num_examples=3 is fewer than one batch of "
                                       "eval.batch_size=7"):  # before training, not at step 2
    trainer.validate_config(trainer.resolve_config(tiny(stage1_dir, **few), tok), 8,
                            tok.num_tokens)
  trainer.validate_config(trainer.resolve_config(  # no evaluation: nothing to refuse
      tiny(stage1_dir, **dict(few, **{"eval.every_steps": 0})), tok), 8, tok.num_tokens)
  with pytest.raises(ValueError, match="cond_dropout=0.1 needs a null condition"):
    trainer.resolve_config(tiny(stage1_dir, "cond=none", **{"model.cond_dropout": 0.1}), tok)


def test_weight_decay_only_on_dense_kernels():
  params = {"value_emb": {"embedding": jnp.ones(2)}, "pos_emb": jnp.ones(2),
            "code_blocks_0": {"ln1": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
                              "attn": {"query": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}},
            "code_head": {"kernel": jnp.ones(2)}}
  mask = trainer.decay_mask(params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in p): v
          for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert {k for k, v in flat.items() if v} == {"code_blocks_0/attn/query/kernel", "code_head/kernel"}


def test_nan_guard_stops_before_checkpointing(stage1_dir, tmp_path):
  c = tiny(stage1_dir, "cond=none,steps=6", debug_inject_nan_step=3)
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 3: .*loss=nan"):
    trainer.train(c, str(tmp_path))
  steps = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1).all_steps()
  assert steps and max(steps) < 3


def test_text_conditioning_trains_samples_and_loads_in_the_cli(stage1_dir, tmp_path):
  from maskvq_jax import sample  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "text")
  out = trainer.train(tiny(stage1_dir, "cond=text,steps=2", **{"sample.every_steps": 2}), wd)
  assert out["config"].model.text_dim == 32 and out["state"].text_params is not None
  assert np.isfinite(out["train"]["loss"])
  assert any(f.startswith("samples_") for f in os.listdir(f"{wd}/images"))
  assert sample.main(["--workdir", wd, "--num", "8", "--out", str(tmp_path / "s"),
                      "--prompts", "a large red circle|a small blue star", "--guidance", "2.0",
                      "--batch_size", "8"]) == 0
  z = np.load(str(tmp_path / "s" / "samples_h00000_00000.npz"))
  assert z["images"].shape == (8, 16, 16, 3)
  assert sample.main(["--workdir", wd, "--num", "8", "--out", str(tmp_path / "t")]) == 2  # no prompts
