"""A workdir given as a URL keeps every artefact under that URL, from stage 1 to evaluation.

The URL scheme is `fake://` (tests/fake_remote.py): one local root mounted in etils.epath (the
project's path helper and Orbax's metadata), in Orbax's TensorStore specs (array data) and in
TensorFlow's summary writer (TensorBoard). Project code that made such a URL local
(`os.path.abspath`) or wrote it with `open` / `os` would put files under the working directory,
which must stay empty. One pass over the whole pipeline, tiny configs:

  stage 1 (checkpoints, TensorBoard events, PNG image grids)
  -> stage 1 again in a new URL workdir with `resume` = the first one (restores step 2, the last:
     no step, so no checkpoint of its own)
  -> token export (ArrayRecord shards + tokens_meta.json; ArrayRecord is local-only, so shards are
     staged through the temp directory)
  -> stage 2 on the URL tokenizer and the URL tokens (checkpoints, events, sample grids)
  -> sampling CLI (npz shards, PNG grids, sample_info.json)
  -> evaluation CLI of the stage-1 run (report.json + mask figures); the samples folder read back
     by URL (`evaluation.data.samples_source`)
  -> the FID statistics cache on the URL (store + cached read; the Inception network is not run,
     to keep the test fast).
"""
import json
import os
import pathlib

import numpy as np

import fake_remote  # tests/ is on sys.path (rootdir conftest)
import stage1_testlib
import stage2_testlib
from maskvq_jax import evaluate
from maskvq_jax import sample
from maskvq_jax.core import checkpointing
from maskvq_jax.core import files
from maskvq_jax.data import tokens as stage2_data
from maskvq_jax.evaluation import data as eval_data
from maskvq_jax.evaluation import reference
from maskvq_jax.stage1 import trainer as stage1
from maskvq_jax.stage2 import trainer as stage2
from maskvq_jax.tools import export_tokens

stage1_testlib.enable_compile_cache()

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = "fake://bkt/run"


def _tree(d: pathlib.Path) -> list[str]:
  return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_every_artefact_lands_under_the_url_workdir(tmp_path, monkeypatch):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  bucket = tmp_path / "bucket"
  with fake_remote.mounted(str(bucket)):
    s1 = files.join(RUN, "stage1")
    c1 = stage1_testlib.tiny("steps=2", **{"eval.every_steps": 2, "eval.image_every_steps": 2})
    out1 = stage1.train(c1, s1)
    assert (out1["first_step"], out1["last_step"]) == (0, 2) and np.isfinite(out1["eval"]["psnr"])
    # resume from a URL: a new workdir starts from the other run's step 2 (and does no step)
    out1b = stage1.train(stage1_testlib.tiny("steps=2", resume=s1), files.join(RUN, "stage1b"))
    assert (out1b["first_step"], out1b["last_step"]) == (2, 2)

    tokens = files.join(RUN, "tokens")
    assert export_tokens.main(["--tokenizer_workdir", s1, "--split", "train", "--out", tokens,
                               "--num", "16", "--batch_size", "8"]) == 0
    meta = stage2_data.tokens_meta(tokens)
    assert meta["tokenizer"] == s1 and meta["splits"]["train"]["num_examples_host0"] == 16

    s2 = files.join(RUN, "stage2")
    c2 = stage2_testlib.tiny(s1, "steps=2", **{"input.tokens_dir": tokens, "sample.every_steps": 2})
    out2 = stage2.train(c2, s2)
    assert out2["last_step"] == 2 and np.isfinite(out2["train"]["loss"])
    assert checkpointing.read_meta(files.join(s2, "checkpoints"))["config"]["tokenizer"] == s1

    samples = files.join(RUN, "samples")
    assert sample.main(["--workdir", s2, "--num", "8", "--out", samples, "--batch_size", "8",
                        "--grids", "1"]) == 0
    info = json.loads(files.read_text(files.join(samples, "sample_info.json")))
    assert info["workdir"] == s2 and info["tokenizer"] == s1

    assert evaluate.main(["--workdir", s1, "--metrics", "psnr,usage,mask", "--batch_size", "8",
                          "--num_figures", "2"]) == 0
    rep = json.loads(files.read_text(files.join(s1, "evaluation", "report.json")))
    assert rep["target"]["path"] == s1 and rep["num_examples"]["reconstruction"] == 16
    assert rep["files"]["mask_figures"] == files.join(s1, "evaluation", "figures", "mask_grid.png")
    src, n = eval_data.samples_source(samples)  # the sampling CLI's shards, read back by URL
    assert n == 8 and src[0]["image"].shape == (16, 16, 3)

    cache = files.join(RUN, "stats_cache")
    spec = eval_data.DatasetSpec(name="shapes/16", split="validation", source="procedural",
                                 res=16, num_examples=4, data_dir="", folder="", data_seed=0)
    pool3 = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    stats = reference.store(spec, pool3, cache)
    assert stats.startswith(cache + "/fid_stats/")
    ref = reference.reference(spec, None, need_features=True, global_batch_size=8,
                              cache_dir=cache)
    assert ref["cached"] and ref["path"] == stats
    np.testing.assert_array_equal(ref["pool3"], pool3)

  assert _tree(cwd) == [], f"files written under the working directory: {_tree(cwd)}"
  assert not (ROOT / "fake:").exists()
  got = _tree(bucket / "bkt" / "run")
  want = [  # (prefix, at least one file whose path starts so)
      "stage1/checkpoints/2/state/", "stage1/checkpoints/2/meta/", "stage1/events.out.tfevents",
      "stage1/images/", "stage1/evaluation/report.json", "stage1/evaluation/figures/mask_grid.png",
      "stage1b/events.out.tfevents",
      "tokens/tokens_meta.json", "tokens/train/tokens-00000-of-00001.array_record",
      "stage2/checkpoints/2/state/", "stage2/events.out.tfevents", "stage2/images/",
      "samples/samples_h00000_00000.npz", "samples/grid_000.png", "samples/sample_info.json",
      "stats_cache/fid_stats/"]
  missing = [w for w in want if not any(g.startswith(w) for g in got)]
  assert not missing, f"missing under {RUN}: {missing}; got {got}"
  assert not [g for g in got if g.endswith(".partial")]
  assert any(g.endswith(".png") for g in got if g.startswith("stage1/images/"))
  assert any(g.endswith(".png") for g in got if g.startswith("stage2/images/"))
  assert os.listdir(bucket) == ["bkt"]


def test_statistics_cache_follows_a_url_maskvq_cache(tmp_path, monkeypatch):
  """$MASKVQ_CACHE = a bucket: the FID statistics (no --stats_cache) are cached in that bucket,
  not in a local folder `fake:/...` under the working directory (`files.cache_root`)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("MASKVQ_CACHE", "fake://bkt/cache")
  spec = eval_data.DatasetSpec(name="shapes/16", split="validation", source="procedural",
                               res=16, num_examples=4, data_dir="", folder="", data_seed=0)
  pool3 = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
  with fake_remote.mounted(str(tmp_path / "bucket")):
    stats = reference.store(spec, pool3)
    assert stats.startswith("fake://bkt/cache/fid_stats/")
    assert reference.cache_paths(spec)[0] == stats
  assert _tree(cwd) == []
  assert _tree(tmp_path / "bucket" / "bkt" / "cache" / "fid_stats") == [
      stats[len("fake://bkt/cache/fid_stats/"):],
      stats[len("fake://bkt/cache/fid_stats/"):-len(".npz")] + ".pool3.npy"]
