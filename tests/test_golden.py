"""Parity with the authors' code: every golden file, every output key; the official converter."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from maskvq_jax.parity import convert_mqvae as convert
from maskvq_jax.data import tokenizer as tokenizer_io
from maskvq_jax.tools import check_golden, convert_official

from conftest import GOLDEN_DIR

GOLDEN_FILES = sorted(p.name for p in GOLDEN_DIR.glob("*.npz")) if GOLDEN_DIR.is_dir() else []


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_check_golden_passes_every_key(golden_dir, name):
  rows, skipped = check_golden.check_file(str(golden_dir / name))
  failed = [r for r in rows if not r.passed]
  assert not failed, "\n".join(f"{r.key}: abs {r.max_abs:.3g} rel {r.max_rel:.3g} {r.note}" for r in failed)
  assert not skipped, f"keys without a checker: {skipped}"
  for r in rows:  # indices exact, floats within 1e-4 relative
    assert r.max_rel <= 1e-4, r


def test_check_golden_cli_exit_status(golden_dir, capsys):
  assert check_golden.main([str(golden_dir / "official_small.npz")]) == 0
  assert "out/rec" in capsys.readouterr().out


def test_parameter_counts_match_official(official_small):
  cfg = json.loads(str(official_small["meta/config_json"]))
  model_kwargs = convert.mqvae_kwargs_from_official(cfg["vae_config"]["params"])
  from maskvq_jax.models import MQVAE
  abstract = convert.abstract_variables(MQVAE(**model_kwargs))
  ours = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["params"]))
  dead_temb = sum(v.size for k, v in official_small.items() if k.startswith("sd/demasker.") and "temb_proj" in k)
  codebook = official_small["sd/quantize.codebook.weight"].size  # a buffer-like parameter, EMA-only
  assert ours + dead_temb + codebook == cfg["n_params"]["vae"]


def test_convert_official_roundtrip_through_orbax(golden_dir, official_small, tmp_path):
  out = tmp_path / "tok"
  assert convert_official.main(["--ckpt", str(golden_dir / "official_small.npz"), "--out", str(out)]) == 0
  model, variables, meta = tokenizer_io.load_tokenizer(str(out))
  assert meta["model"]["keep_ratio"] == 0.25 and model.num_tokens == 16
  x = np.transpose(official_small["in/x"], (0, 2, 3, 1))
  rec, aux = model.apply(variables, x)
  np.testing.assert_array_equal(np.asarray(aux["codes"]), official_small["out/codes"])
  ref = np.transpose(official_small["out/rec"], (0, 2, 3, 1))
  assert np.abs(np.asarray(rec) - ref).max() <= 1e-4 * np.abs(ref).max()
  # A second conversion into the same step is refused; the first one stays intact.
  assert convert_official.main(["--ckpt", str(golden_dir / "official_small.npz"), "--out", str(out)]) == 2
  assert tokenizer_io.read_meta(str(out))[1] == 0


def test_convert_reports_missing_and_unknown_keys_and_writes_nothing(official_small, tmp_path):
  npz = {k: v for k, v in official_small.items() if k != "sd/decoder.conv_out.bias"}
  npz["sd/encoder.extra_layer.weight"] = np.zeros(3, np.float32)
  bad = tmp_path / "bad.npz"
  np.savez(bad, **npz)
  with pytest.raises(ValueError) as e:
    convert_official.convert(str(bad), None, str(tmp_path / "out"))
  msg = str(e.value)
  assert "decoder/conv_out/bias" in msg and "encoder.extra_layer.weight" in msg
  assert not os.path.exists(tmp_path / "out")
