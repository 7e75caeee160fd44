"""The two-stage quickstart end to end at the CI size (QUICKSTART_TINY / --tiny).

Checks that every promised file is written, that the stage-1 numbers in metrics.json equal a
numpy recomputation from the trained tokenizer on the same images, and that a re-run resumes
both trainers at their last step (no step trained again, no checkpoint file rewritten).
"""
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.core import checkpointing
from maskvq_jax.data import runs
from maskvq_jax.data.builders.shapes import generate as shapes_gen
from maskvq_jax.evaluation import shape_classifier
from maskvq_jax.tools import quickstart
from stage1_testlib import enable_compile_cache

enable_compile_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_script_is_valid_bash_and_uses_the_tiny_knob():
  script = os.path.join(ROOT, "launch", "quickstart.sh")
  subprocess.run(["bash", "-n", script], check=True)
  text = open(script).read()
  assert "QUICKSTART_TINY" in text and "launch/setup_env.sh" in text
  assert "maskvq_jax.tools.quickstart" in text


def _stage1_reference(stage1_dir: str, num: int, res: int) -> dict:
  """The stage-1 metrics recomputed in numpy from the tokenizer's outputs on the same images."""
  model, variables, _ = runs.load_tokenizer(stage1_dir)
  exs = [shapes_gen.make_example(0, i, res, "validation") for i in range(num)]
  images = np.stack([e["image"] for e in exs])
  x = images.astype(np.float32) / 127.5 - 1.0
  rec, aux = model.apply(variables, jnp.asarray(x), train=False,
                         rngs={"mask": jax.random.key(0)})
  rec = np.clip(np.asarray(rec, np.float64), -1.0, 1.0)
  mse = np.mean((images / 255.0 - (rec + 1) / 2) ** 2, axis=(1, 2, 3))
  codes = np.asarray(aux["codes"]).reshape(-1)
  freq = np.bincount(codes, minlength=model.codebook_size) / codes.size
  nz = freq[freq > 0]
  # a token is on the object when at least half of its grid cell is object
  g = model.grid
  obj = np.stack([e["mask"][..., 0] for e in exs]).astype(np.float64)
  cell = obj.reshape(num, g, res // g, g, res // g).mean(axis=(2, 4)).reshape(num, g * g)
  on = cell >= 0.5
  keep = np.asarray(aux["mask"]) > 0
  return {"psnr": float(np.mean(-10 * np.log10(mse))),
          "codebook_used_fraction": len(nz) / model.codebook_size,
          "codebook_perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
          "kept_on_object_tokens": float(np.mean((keep & on).sum(1) / keep.sum(1))),
          "object_tokens_chance": float(np.mean(on))}


def _files_and_mtimes(root: str) -> dict:
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, fs in os.walk(root) for f in fs}


def test_quickstart_tiny_end_to_end(tmp_path):
  wd = str(tmp_path / "qs")
  assert quickstart.main(["--workdir", wd, "--tiny"]) == 0
  for f in ("reconstructions.png", "samples_unconditional.png", "samples_class.png",
            "mask/mask_grid.png", "mask/mask_heat_00.png", "mask/mask_overlay_00.png",
            "metrics.json"):
    assert os.path.getsize(os.path.join(wd, f)) > 0, f
  m = json.load(open(os.path.join(wd, "metrics.json")))
  s1_arg, _, n_report, _ = quickstart.SIZES["tiny"]
  res = quickstart.stage1_config.get_config(s1_arg).input.res
  ref = _stage1_reference(os.path.join(wd, "stage1"), n_report, res)
  assert m["stage1"]["num_images"] == n_report
  assert m["stage1"]["psnr"] == pytest.approx(ref["psnr"], abs=1e-4)
  for k in ("codebook_used_fraction", "codebook_perplexity", "kept_on_object_tokens",
            "object_tokens_chance"):
    assert m["stage1"][k] == pytest.approx(ref[k], rel=1e-6), k
  assert m["stage2"]["sampling_tokens_per_s"] > 0 and m["stage2"]["positions_distinct"]
  _check_class_accuracies(m, wd, n_report, res)
  for stage in ("stage1", "stage2"):  # a fresh run: from step 0 to the last step
    assert (m[stage]["resumed_at_step"], m[stage]["steps_run"], m[stage]["train_steps"]) == (
        0, 4, 4), stage

  ckpt_dirs = [os.path.join(wd, s, "checkpoints") for s in ("stage1", "stage2")]
  before = [_files_and_mtimes(d) for d in ckpt_dirs]
  steps = checkpointing.Checkpointer(ckpt_dirs[1], save_every=1).all_steps()
  assert quickstart.main(["--workdir", wd, "--tiny"]) == 0  # resumes: nothing redone or lost
  again = json.load(open(os.path.join(wd, "metrics.json")))
  for stage in ("stage1", "stage2"):  # both trainers restored step 4 and trained no step
    assert (again[stage]["resumed_at_step"], again[stage]["steps_run"]) == (4, 0), stage
    assert again[stage]["checkpoint_step"] == 4, stage
  assert [_files_and_mtimes(d) for d in ckpt_dirs] == before  # no checkpoint file rewritten
  assert checkpointing.Checkpointer(ckpt_dirs[1], save_every=1).all_steps() == steps
  assert again["stage1"]["psnr"] == m["stage1"]["psnr"]  # the same tokenizer, the same numbers
  assert again["classifier"]["cached"] and not m["classifier"]["cached"]  # not trained again
  for stage in ("stage1", "stage2", "classifier"):  # the same classifier, the same accuracies
    keys = [k for k in m[stage] if "accuracy" in k]
    assert keys and {k: again[stage][k] for k in keys} == {k: m[stage][k] for k in keys}, stage


def _check_class_accuracies(m, wd, n_report, res):
  """The sample-classifier keys: present, consistent, and equal to the cached classifier's own
  predictions on the same real images."""
  s2, clf_m = m["stage2"], m["classifier"]
  per_class = quickstart.SAMPLES_PER_CLASS["tiny"]
  assert s2["samples_per_class"] == per_class
  assert list(s2["per_class_accuracy"]) == s2["sample_class_rows"]
  for key in ("class", "shape", "colour"):  # equal-sized rows: the overall is the mean of rows
    rows = [v[key] for v in s2["per_class_accuracy"].values()]
    assert s2[f"{key}_accuracy"] == pytest.approx(np.mean(rows)), key
    assert all(0.0 <= r <= 1.0 and r * per_class == pytest.approx(round(r * per_class))
               for r in rows), key
    for prefix in ("recon_", "real_"):
      assert 0.0 <= m["stage1"][prefix + key + "_accuracy"] <= 1.0
    assert 0.0 <= clf_m["heldout_" + key + "_accuracy"] <= 1.0
  assert clf_m["num_heldout"] == 1024 and clf_m["train_steps"] == quickstart.CLASSIFIER["tiny"][
      "steps"]
  clf = shape_classifier.load_or_train(os.path.join(wd, "classifier"), res=res,
                                       **quickstart.CLASSIFIER["tiny"])
  assert clf.cached
  exs = [shapes_gen.make_example(0, i, res, "validation") for i in range(n_report)]
  acc = shape_classifier.accuracy(clf, np.stack([e["image"] for e in exs]),
                                  [e["label"] for e in exs])
  assert m["stage1"]["real_class_accuracy"] == acc["class"]
  assert m["stage1"]["real_colour_accuracy"] == acc["colour"]
