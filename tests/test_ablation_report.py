"""Tests for the mask-ratio ablation tooling: the report tool on tiny fake workdirs and the sweep
launcher's variable checks / dry run (no training runs here)."""
import os
import pathlib
import subprocess

import numpy as np
import pytest
from PIL import Image

from maskvq_jax.core import checkpointing
from maskvq_jax.evaluation import report as report_lib
from maskvq_jax.tools import ablation_report

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP = REPO / "launch" / "sweep_mask_ratio.sh"


def _write_report(path, kind, keep, tokens, metrics, created):
  rep = report_lib.new_report({"kind": kind, "path": str(path)})
  rep["created"] = created
  rep["tokenizer"] = {"keep_ratio": keep, "tokens_per_image": tokens, "grid": 16}
  rep["metrics"] = metrics
  report_lib.write(os.path.join(path, "evaluation", "report.json"), rep)


@pytest.fixture()
def fake_runs(tmp_path):
  root = tmp_path / "sweep"
  k1, k3, k5 = root / "keep_0.1", root / "keep_0.3", root / "keep_0.5"
  # keep 0.1: stage 1 only, evaluated twice (the newer report must win)
  _write_report(k1, "stage1", 0.1, 25, {"rfid": 9.0, "psnr": 20.0}, "2026-01-01T00:00:00+00:00")
  os.rename(k1 / "evaluation" / "report.json", k1 / "evaluation" / "old.json")
  _write_report(k1 / "old_eval", "stage1", 0.1, 25, {"rfid": 9.0, "psnr": 20.0},
                "2026-01-01T00:00:00+00:00")
  _write_report(k1, "stage1", 0.1, 25, {"rfid": 7.5, "psnr": 21.25,
                                        "codebook/used_fraction": 0.625},
                "2026-01-02T00:00:00+00:00")
  # keep 0.3: stage 1 + a sampled stage-2 run in a subdirectory
  _write_report(k3, "stage1", 0.3, 76, {"rfid": 4.0, "psnr": 23.5,
                                        "codebook/used_fraction": 0.9}, "2026-01-01T00:00:00")
  _write_report(k3 / "stage2", "stage2", 0.3, 76, {"fid": 12.345,
                                                   "sampling/tokens_per_s": 15234.6},
                "2026-01-03T00:00:00")
  # keep 0.5: trained (a checkpoint with its config) but not evaluated
  ck = checkpointing.Checkpointer(str(k5 / "checkpoints"), save_every=1, async_save=False)
  model = {"resolution": 64, "ch_mult": [1, 1, 2], "keep_ratio": 0.5, "dense": False}
  ck.save(1, {"step": np.int32(1)}, meta={"step": 1, "config": {"trainer": "mqvae",
                                                                "model": model}}, force=True)
  ck.close()
  return root, [str(k5), str(k1), str(k3)]


def test_report_table_and_plot(fake_runs, capsys):
  root, workdirs = fake_runs
  out = root / "ablation.md"
  assert ablation_report.main(["--workdirs", *workdirs, "--output", str(out),
                               "--title", "toy"]) == 0
  text = out.read_text()
  lines = [l for l in text.splitlines() if l.startswith("| keep_")]
  assert [l.split("|")[1].strip() for l in lines] == ["keep_0.1", "keep_0.3", "keep_0.5"]
  header = text.splitlines()[2]
  assert "| FID ↓ |" in header and "sampling tokens/s ↑" in header
  cells = lambda l: [c.strip() for c in l.strip("|").split("|")]
  assert cells(lines[0]) == ["keep_0.1", "0.1", "25", "7.50", "21.25", "62.5%", "n/a", "n/a"]
  assert cells(lines[1]) == ["keep_0.3", "0.3", "76", "4.00", "23.50", "90.0%", "12.35", "15,235"]
  # keep 0.5 from its config: 64 px, f4 -> 16x16 grid, 128 tokens kept
  assert cells(lines[2]) == ["keep_0.5", "0.5", "128", "n/a", "n/a", "n/a", "n/a", "n/a"]
  assert "Not evaluated yet" in text
  assert "has no evaluation/report.json" in capsys.readouterr().err
  with Image.open(root / "ablation.png") as im:
    assert im.format == "PNG" and im.size[0] > im.size[1] > 100  # a row of panels


def test_report_without_sampling_omits_sample_columns(fake_runs):
  root, workdirs = fake_runs
  rows = [ablation_report.collect(w) for w in workdirs[:2]]
  rows[1] = {k: v for k, v in rows[1].items() if not k.startswith(("fid", "sampling"))}
  text = ablation_report.markdown(sorted(rows, key=lambda r: r["keep_ratio"]))
  assert "| FID ↓" not in text and "tokens/s" not in text and "| rFID ↓" in text
  assert ablation_report.plot(rows, str(root / "p.png")) == str(root / "p.png")


def test_report_rejects_disagreeing_runs(tmp_path, capsys):
  _write_report(tmp_path / "a", "stage1", 0.1, 25, {"rfid": 1.0}, "2026-01-01")
  _write_report(tmp_path / "a" / "stage2", "stage2", 0.3, 76, {"fid": 2.0}, "2026-01-02")
  assert ablation_report.main(["--workdirs", str(tmp_path / "a"),
                               "--output", str(tmp_path / "x.md")]) == 2
  assert "disagree on keep_ratio" in capsys.readouterr().err
  assert ablation_report.main(["--workdirs", str(tmp_path / "none"),
                               "--output", str(tmp_path / "x.md")]) == 2


# ----- launch/sweep_mask_ratio.sh ----------------------------------------------------------------
def _sweep(env, tmp_path):
  full = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
  return subprocess.run(["bash", str(SWEEP)], env=full, capture_output=True, text=True,
                        timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("env,message", [
    ({}, "ROOT is not set"),
    ({"ROOT": "/tmp/x"}, "KEEPS is not set"),
    ({"ROOT": "/tmp/x", "KEEPS": "0.3 abc"}, "'abc' is not a number in (0, 1]"),
    ({"ROOT": "/tmp/x", "KEEPS": "0.3 1.5"}, "'1.5' is not a number in (0, 1]"),
    ({"ROOT": "/tmp/x", "KEEPS": "0"}, "'0' is not in (0, 1]"),
    ({"ROOT": "/tmp/x", "KEEPS": "0.3", "CONFIG": "configs/nope.py"}, "CONFIG=configs/nope.py"),
    ({"ROOT": "/tmp/x", "KEEPS": "0.3", "CONFIG_ARGS": "keep=0.2"}, "must not set keep"),
])
def test_sweep_fails_early_with_a_clear_message(env, message, tmp_path):
  r = _sweep(env, tmp_path)
  assert r.returncode == 2 and message in r.stderr and r.stdout == ""


def test_sweep_dry_run_prints_one_run_per_keep(tmp_path):
  r = _sweep({"ROOT": str(tmp_path / "runs"), "KEEPS": "0.25 0.5", "DRY_RUN": "1",
              "CONFIG": "configs/quickstart.py", "CONFIG_ARGS": "steps=10",
              "MULTIHOST": "1", "EXTRA_FLAGS": "--config.log_every_steps=5"}, tmp_path)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 5  # 2 x (train, evaluate) + report
  for k, (train, ev) in zip(("0.25", "0.5"), (lines[0:2], lines[2:4])):
    assert "-m maskvq_jax.main" in train and f"configs/quickstart.py:keep={k}" in train
    assert f"--workdir {tmp_path}/runs/keep_{k}" in train and "--multihost" in train
    assert "--config.log_every_steps=5" in train and "steps=10" in train
    assert "-m maskvq_jax.evaluate" in ev and f"keep_{k}" in ev
  assert "ablation_report" in lines[4] and f"{tmp_path}/runs/ablation.md" in lines[4]


def test_a_stage2_run_still_training_is_not_read_as_a_tokenizer(tmp_path):
  """A stage-2 workdir with a checkpoint but no evaluation yet (a partly finished reproduction):
  a ValueError naming it (the reports then show n/a), not a KeyError from the tokenizer fields."""
  wd = tmp_path / "stackformer"
  ck = checkpointing.Checkpointer(str(wd / "checkpoints"), save_every=1, async_save=False)
  ck.save(1, {"step": np.int32(1)}, meta={"step": 1, "config": {
      "trainer": "stackformer", "model": {"d_model": 128, "code_layers": 3}}}, force=True)
  ck.close()
  with pytest.raises(ValueError, match=rf"^{wd}: no evaluation report and no readable checkpoint "
                                       rf"\({wd}: not a tokenizer run \(no resolution / ch_mult"):
    ablation_report.collect(str(wd))
