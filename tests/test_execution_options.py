"""Stage-2 execution options from configs and the command line: scan_layers, remat_policy,
attention_impl; bad values; a run saved unrolled resumed scanned (checkpoint relayout);
attention_impl="cudnn" falling back to XLA on the CPU.

Tiny sizes (the stage-2 trainer tests' 16 px tokenizer; Stackformer d 32, 2 + 2 layers) over 8
simulated CPU devices.
"""
import logging
import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

from configs import quickstart_stage2
from configs import stackformer_coco_text
from configs import stackformer_ffhq256
from configs import stackformer_imagenet256_class
from maskvq_jax.core import cli
from maskvq_jax.core import resume_guard
from maskvq_jax.data import runs as ckpt_loader
from maskvq_jax.models import transformer
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer
from maskvq_jax.stage2 import dense as dense_lib
from maskvq_jax.stage2 import sampling
from maskvq_jax.stage2 import trainer
from stage1_testlib import enable_compile_cache
from stage2_testlib import make_stage1_workdir, tiny

enable_compile_cache()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ("scan_layers", "remat_policy", "attention_impl")


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
  return make_stage1_workdir(str(tmp_path_factory.mktemp("stage1")))


# ----- configs and command line -----------------------------------------------------------------
def test_config_defaults():
  small = quickstart_stage2.get_config("tiny")
  assert {k: small.model[k] for k in OPTIONS} == dict(scan_layers=False, remat_policy="none",
                                                      attention_impl="xla")
  for module, arg in ((stackformer_ffhq256, ""), (stackformer_imagenet256_class, "large"),
                      (stackformer_imagenet256_class, ""), (stackformer_coco_text, "")):
    assert module.get_config(arg).model.scan_layers is True, module.__name__


def test_command_line_sets_them(monkeypatch):
  argv = ["prog", f"--config={ROOT}/configs/quickstart_stage2.py:tiny",
          "--config.model.scan_layers=True", "--config.model.remat_policy=dots_saveable",
          "--config.model.attention_impl=cudnn"]
  cli.check_overrides(argv[1:], quickstart_stage2.get_config("tiny"))  # main's check: fields exist
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv)
  fv(argv)
  m = fv.config.model
  assert (m.scan_layers, m.remat_policy, m.attention_impl) == (True, "dots_saveable", "cudnn")
  # ... and they reach both stage-2 models
  kw = trainer._model_kwargs(fv.config)  # pylint: disable=protected-access
  assert Stackformer(**kw).scan_layers and Stackformer(**kw).attention_impl == "cudnn"
  dense = DenseGPT(**dense_lib.model_kwargs(m))
  assert (dense.scan_layers, dense.remat_policy, dense.attention_impl) == (
      True, "dots_saveable", "cudnn")
  # an older checkpoint's model dict without them: the model defaults
  old = {k: v for k, v in m.to_dict().items() if k not in OPTIONS}
  assert not DenseGPT(**dense_lib.model_kwargs(old)).scan_layers


@pytest.mark.parametrize("field,value,match", [
    ("remat_policy", "everything", r"^model\.remat_policy='everything'; choose one of none, full, "
                                   r"dots_saveable, dots_with_no_batch_dims_saveable$"),
    ("attention_impl", "flash", r"^model\.attention_impl='flash'; choose one of xla, dot_product, "
                                r"cudnn, pallas, auto$"),
])
def test_bad_values_fail_before_anything_compiles(stage1_dir, tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    trainer.train(tiny(stage1_dir, **{f"model.{field}": value}), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing written
  with pytest.raises(ValueError, match=r"^model\.scan_layers=1: expected True or False$"):
    trainer.check_execution_options({"scan_layers": 1})


def test_resume_guard_lets_them_change():
  stored = {"model": {"d_model": 32, "scan_layers": False, "remat_policy": "none",
                      "attention_impl": "xla"}}
  current = {"model": {"d_model": 32, "scan_layers": True, "remat_policy": "full",
                       "attention_impl": "cudnn"}}
  assert resume_guard.differences(stored, current, resume_guard.STATE_FIELDS) == []
  # the batch in more or fewer micro-batches: the same update, free on resume (other optim keys not)
  check = resume_guard.checker(tiny("/unused", **{"optim.grad_accum_steps": 4}))
  meta = {"config": {"optim": dict(tiny("/unused").optim.to_dict(), grad_accum_steps=1)}}
  assert check(meta, True) == []
  meta["config"]["optim"]["b2"] = 0.99
  assert check(meta, True) == ["optim.b2: checkpoint 0.99 vs config 0.95"]
  current["model"]["d_model"] = 64
  assert resume_guard.differences(stored, current, resume_guard.STATE_FIELDS) == [
      "model.d_model: checkpoint 32 vs config 64"]


# ----- checkpoints across layouts ---------------------------------------------------------------
def _close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_run_saved_unrolled_resumes_scanned(stage1_dir, tmp_path):
  layers = {"model.code_layers": 2, "model.position_layers": 2}
  c = lambda **kw: tiny(stage1_dir, "cond=none,steps=3", **layers, **kw)
  straight = trainer.train(c(), str(tmp_path / "a"))
  wd = str(tmp_path / "b")
  trainer.train(c(run_steps=1), wd)
  rest = trainer.train(c(**{"model.scan_layers": True, "model.remat_policy": "dots_saveable",
                            "sample.every_steps": 3}), wd)
  assert (rest["first_step"], rest["last_step"]) == (1, 3)
  assert "code_blocks" in rest["state"].params and "code_blocks_0" not in rest["state"].params
  assert rest["state"].params["code_blocks"]["mlp_fc"]["kernel"].shape == (2, 32, 128)
  # the resumed scanned run continues the unrolled one: its state, unstacked, is the straight run's
  # (params, and Adam's moments through the same relayout); float rounding of scan vs loop only
  stacks = {"code_blocks": 2, "position_blocks": 2}
  got = transformer.relayout_tree(jax.device_get(rest["state"]), stacks, scanned=False)
  want = jax.device_get(straight["state"])
  assert jax.tree.structure(got) == jax.tree.structure(want)
  _close(got, want, 2e-5)
  # the scanned checkpoint loads (scanned model, stacked params) and samples as its unrolled twin
  model, variables, _ = ckpt_loader.load_stage2(wd)
  assert model.scan_layers and "code_blocks" in variables["params"]
  cfg = sampling.SamplerConfig(steps=6, top_k=5)
  out = sampling.sample(model, variables, jax.random.key(1), cfg, batch_size=2)
  ref = sampling.sample(model.clone(scan_layers=False),
                        transformer.relayout(variables, stacks, scanned=False), jax.random.key(1),
                        cfg, batch_size=2)
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_array_equal(out.positions, ref.positions)
  # ... and back: the scanned workdir resumed unrolled (through config.resume) reads the same
  back = trainer.train(c(resume=wd, run_steps=0), str(tmp_path / "c"))
  assert back["first_step"] == 3 and "code_blocks_1" in back["state"].params
  _close(jax.device_get(back["state"]), got, 0)


# ----- attention_impl="cudnn" -------------------------------------------------------------------
def test_cudnn_attention_falls_back_to_xla_on_cpu(caplog):
  model = Stackformer(vocab_size=17, position_size=13, block_size=12, d_model=32, n_heads=4,
                      code_layers=2, position_layers=1)
  rng = np.random.default_rng(0)
  codes = jnp.asarray(rng.integers(0, 16, (2, 7)))
  pos = jnp.asarray(rng.integers(0, 12, (2, 7)))
  params = model.init(jax.random.key(0), codes, pos, codes)
  ref = model.apply(params, codes, pos, codes)
  transformer._FALLBACK_NOTES.clear()  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    out = model.clone(attention_impl="cudnn").apply(params, codes, pos, codes)
  _close(out, ref, 1e-5)
  notes = [r.getMessage() for r in caplog.records if "attention_impl='cudnn'" in r.getMessage()]
  assert len(notes) == 1 and "using XLA attention" in notes[0], notes  # one note, not per layer
  assert jax.default_backend() != "gpu" or "cuDNN" in notes[0]
