"""Sampling CLI on a tiny trained stage-2 workdir: counts, shards, grids, distinct positions, errors."""
import glob
import json
import os

import numpy as np
import pytest

from maskvq_jax import evaluate
from maskvq_jax import sample
from maskvq_jax.evaluation import data as eval_data
from maskvq_jax.stage2 import sampling
from maskvq_jax.stage2 import trainer
from stage1_testlib import enable_compile_cache
from stage2_testlib import make_stage1_workdir, tiny

enable_compile_cache()


@pytest.fixture(scope="module")
def stage2_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("s2")
  s1 = make_stage1_workdir(str(root / "stage1"))
  trainer.train(tiny(s1, "steps=2"), str(root / "stage2"))
  return str(root / "stage2")


def _load(out):
  shards = sorted(glob.glob(os.path.join(out, "samples_h*.npz")))
  z = [dict(np.load(p)) for p in shards]
  return {k: np.concatenate([d[k] for d in z]) for k in z[0]}, shards


def test_cli_writes_requested_images_without_duplicate_positions(stage2_dir, tmp_path):
  out = str(tmp_path / "s")
  rc = sample.main(["--workdir", stage2_dir, "--num", "11", "--out", out, "--batch_size", "8",
                    "--classes", "3,5", "--top_k", "4", "--position_top_p", "0.9",
                    "--shard_size", "8", "--seed", "1"])
  assert rc == 0
  z, shards = _load(out)
  assert len(shards) == 2  # 8 + 3 rows
  assert z["images"].shape == (11, 16, 16, 3) and z["images"].dtype == np.uint8
  np.testing.assert_array_equal(np.sort(z["index"]), np.arange(11))
  np.testing.assert_array_equal(z["labels"][np.argsort(z["index"])], [3, 5] * 5 + [3])
  assert z["positions"].shape == (11, 32)
  for p in z["positions"]:
    assert len(np.unique(p)) == len(p) and p.min() >= 0 and p.max() < 64
  assert z["codes"].max() < 16
  info = json.load(open(os.path.join(out, "sample_info.json")))
  assert info["num"] == 11 and info["tokens_per_s"] > 0 and info["conditions"] == "classes"
  assert os.path.exists(os.path.join(out, "grid_000.png"))
  # the evaluator reads the whole --out folder: every shard in global order, not the PNG grids
  src, n = eval_data.samples_source(out)
  assert n == 11
  order = np.argsort(z["index"])
  for i in (0, 5, 7, 8, 10):
    np.testing.assert_array_equal(src[i]["image"], z["images"][order[i]])
  # the null class (unconditional) path of a guidance-trained class model
  rc = sample.main(["--workdir", stage2_dir, "--num", "8", "--out", str(tmp_path / "u"),
                    "--classes", "null", "--batch_size", "8"])
  assert rc == 0 and _load(str(tmp_path / "u"))[0]["images"].shape[0] == 8
  # never overwrites
  rc = sample.main(["--workdir", stage2_dir, "--num", "8", "--out", out, "--batch_size", "8"])
  assert rc == 2


@pytest.mark.parametrize("extra,match", [
    (["--classes", "48"], r"--classes='48': ids must be in \[0, 48\)"),
    (["--prompts", "a red circle"], "--prompts given but the model is class-conditional"),
    (["--batch_size", "0"], "--batch_size=0 must be >= 1"),
    (["--top_k", "0"], r"top_k must be None or an int in \[1, 16\]"),
    (["--position_top_p", "1.5"], r"position_top_p must be None or in \(0, 1\]"),
    (["--temperature", "0"], "temperature must be a finite number > 0"),
    (["--num", "0"], "--num=0 must be >= 1"),
])
def test_bad_options_fail_before_compiling(stage2_dir, tmp_path, capsys, extra, match):
  import re  # pylint: disable=import-outside-toplevel
  rc = sample.main(["--workdir", stage2_dir, "--num", "4", "--out", str(tmp_path / "x")] + extra)
  assert rc == 2
  assert re.search(match, capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "x")


def test_position_temperature_follows_temperature_unless_given():
  """As the authors' sampler, one --temperature divides code and position logits;
  --position_temperature overrides it for positions only."""
  base = ["--workdir", "w", "--num", "1", "--out", "o", "--temperature", "2.5"]
  cfg = sample.sampler_config(sample.parse_args(base), 8)
  assert cfg.position_temperature is None and sampling.position_temperature(cfg) == 2.5
  cfg = sample.sampler_config(sample.parse_args(base + ["--position_temperature", "0.5"]), 8)
  assert (cfg.temperature, sampling.position_temperature(cfg)) == (2.5, 0.5)
  assert evaluate.parse_args(["--samples", "s"]).position_temperature is None
  c = tiny("", "steps=2")
  assert c.sample.position_temperature < 0  # config default: follow sample.temperature
  c.sample.temperature = 1.5
  assert sampling.position_temperature(trainer._sampler_config(c, 8)) == 1.5  # pylint: disable=protected-access
  c.sample.position_temperature = 0.7
  assert sampling.position_temperature(trainer._sampler_config(c, 8)) == 0.7  # pylint: disable=protected-access
