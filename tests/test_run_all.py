"""benchmarks/run_all.py's table logic: the sampling ratio is taken against the authors' sampler
measured in the same run when there is one, else against the quoted figure, labelled as such, in
the table and in the JSON. Pure Python: nothing here runs a benchmark or needs torch."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_all():
  spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


MQ = {"train_fwd_bwd": 6.0, "gan_step": 4.0, "recon": 20.0, "dense_fwd_bwd": 6.0}
SM = {"batch": 8, "masked": {"layers": "4+4", "steps": 64, "tokens_per_s": 2750.0, "images_per_s": 42.97},
      "dense": {"layers": 8, "steps": 256, "tokens_per_s": 1500.0, "images_per_s": 5.86},
      "masked_bf16_weights": {"tokens_per_s": 4125.0, "images_per_s": 64.45},
      "masked_over_dense_images_per_s": 7.33}
AUTHORS_SAMPLING = {"bench": "authors_sampling", "tokens_per_s": 137.5, "batch": 8, "steps": 64, "runs": 5, "threads": 2,
                    "torch": "2.14.1"}


def _block(run_all, authors_sampling):
  return run_all.tables(MQ, SM, "today", "here", {}, authors_sampling)


def _json_lines(block):
  return [json.loads(l) for l in block.splitlines() if l.startswith("{")]


def _masked_row(block):
  return next(l for l in block.splitlines() if l.startswith("| Stackformer 4+4"))


def test_quoted_figure_without_authors_run():
  run_all = _run_all()
  block = _block(run_all, {})
  assert "vs authors' 220 tokens/s (quoted) |" in block
  assert "measured" not in block
  # 2750 / 220 = 12.5; bf16 4125 / 220 = 18.75.
  assert _masked_row(block).endswith("| 12.5x (target >= 20x) |")
  summary = _json_lines(block)[-1]
  assert summary == {"authors_sampling_tokens_per_s": 220.0, "authors_sampling_source": "quoted",
                     "sampling_vs_authors": 12.5, "sampling_bf16_weights_vs_authors": 18.75,
                     "sampling_target": 20.0}


def test_measured_figure_replaces_the_quote():
  run_all = _run_all()
  block = _block(run_all, AUTHORS_SAMPLING)
  assert "vs authors' 137.5 tokens/s (measured, same run) |" in block
  assert "(quoted)" not in block
  # 2750 / 137.5 = 20.0; bf16 4125 / 137.5 = 30.0.
  assert _masked_row(block).endswith("| 20.0x (target >= 20x) |")
  bf16_row = next(l for l in block.splitlines() if l.startswith("| Stackformer, bf16"))
  assert bf16_row.endswith("| 30.0x |")
  lines = _json_lines(block)
  assert AUTHORS_SAMPLING in lines  # The authors' raw line is kept with the others.
  assert lines[-1]["authors_sampling_source"] == "measured"
  assert lines[-1]["authors_sampling_tokens_per_s"] == 137.5
  assert lines[-1]["sampling_vs_authors"] == 20.0
  assert lines[-1]["sampling_bf16_weights_vs_authors"] == 30.0
  assert "median of 5 runs" in block and "torch 2.14.1, threads 2" in block


def test_bad_measured_figure_is_refused():
  run_all = _run_all()
  with pytest.raises(ValueError, match="got 0"):
    run_all.sampling_reference({"tokens_per_s": 0})


def test_authors_run_at_another_config_is_refused():
  run_all = _run_all()
  with pytest.raises(ValueError, match=r"\(8, 16\), ours at \(8, 64\)"):
    _block(run_all, {**AUTHORS_SAMPLING, "steps": 16})
