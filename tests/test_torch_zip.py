"""Tests for the torch-free checkpoint reader (maskvq_jax/tools/torch_zip.py).

The fixtures in tests/data/ were written by real torch (tests/data/make_torch_fixtures.py); the
hostile pickles are hand-assembled here, so no torch is needed to run this file.
"""
import os
import pathlib
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

from maskvq_jax.tools import torch_zip

DATA = pathlib.Path(__file__).resolve().parent / "data"
CKPT = DATA / "torch_ckpt_small.ckpt"
LEGACY = DATA / "torch_ckpt_legacy.pt"
EXPECTED = DATA / "torch_ckpt_expected.npz"


@pytest.fixture(scope="module")
def expected():
  return dict(np.load(EXPECTED))


def _assert_state_dict_exact(sd, expected, skip=()):
  want = {k[len("state_dict/"):]: v for k, v in expected.items() if k.startswith("state_dict/")}
  want = {k: v for k, v in want.items() if k not in skip}
  assert sorted(sd) == sorted(want)
  for key, ref in want.items():
    got = sd[key]
    assert got.dtype == ref.dtype, key
    assert got.shape == ref.shape, key
    assert got.flags.c_contiguous and got.flags.writeable, key
    np.testing.assert_array_equal(got, ref, err_msg=key)


def test_zip_checkpoint_round_trips_exactly(expected):
  obj = torch_zip.load_torch_checkpoint(CKPT)
  sd = torch_zip.state_dict_from_checkpoint(obj)
  _assert_state_dict_exact(sd, expected)
  assert list(sd)[:2] == ["encoder.conv_in.weight", "encoder.norm.weight"]  # order kept
  assert obj["epoch"] == 3 and obj["global_step"] == 1234
  np.testing.assert_array_equal(obj["callbacks"]["ModelCheckpoint"].state["best"],
                                expected["callbacks/best"])
  np.testing.assert_array_equal(obj["optimizer_states"][0]["state"][0]["exp_avg"],
                                expected["optimizer/exp_avg"])


def test_specific_tensor_kinds(expected):
  sd = torch_zip.state_dict_from_checkpoint(torch_zip.load_torch_checkpoint(CKPT))
  assert sd["decoder.proj.weight"].dtype == np.float32  # bfloat16 widened exactly
  assert sd["encoder.norm.weight"].dtype == np.float16
  assert sd["scalar"].shape == () and float(sd["scalar"]) == 2.5
  assert sd["quantize.embed_ind"][2] == 2**40 and sd["quantize.embed_ind"][4] == -(2**62)
  np.testing.assert_array_equal(sd["transposed"], expected["state_dict/transposed"])
  # shared_a / shared_b are views of one storage (0.5 * i - 3) at offsets 2 and 10.
  np.testing.assert_array_equal(sd["shared_a"], np.arange(2, 8) * 0.5 - 3.0)
  np.testing.assert_array_equal(sd["shared_b"], (np.arange(10, 22) * 0.5 - 3.0).reshape(3, 4))
  sd["shared_a"][:] = 99.0  # copies, not views of one buffer
  assert sd["shared_b"].max() < 99.0


def test_lightning_objects_become_placeholders():
  obj = torch_zip.load_torch_checkpoint(CKPT)
  hp = obj["hyper_parameters"]
  assert isinstance(hp, torch_zip.Placeholder)
  assert hp.pickle_global == "__main__.AttributeDict"
  assert hp["lr"] == 4.5e-6 and hp["ddconfig"]["ch_mult"] == (1, 1, 2)
  assert hp["blob"] == b"\x00\xffbytes"
  cb = obj["callbacks"]["ModelCheckpoint"]
  assert cb.pickle_global == "__main__.CallbackState" and cb.state["monitor"] == "val/rec_loss"


def test_legacy_format_round_trips_exactly(expected):
  sd = torch_zip.state_dict_from_checkpoint(torch_zip.load_torch_checkpoint(LEGACY))
  _assert_state_dict_exact(sd, expected, skip=("uint16",))


def test_flatten_arrays_walks_placeholders():
  flat = torch_zip.flatten_arrays(torch_zip.load_torch_checkpoint(CKPT))
  assert "callbacks.ModelCheckpoint.best" in flat
  assert "state_dict.scalar" in flat
  assert "optimizer_states.0.state.0.exp_avg" in flat


# ---- hostile and broken inputs -------------------------------------------------------------


def _unicode(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b


def _call_pickle(module: str, name: str, arg: str) -> bytes:
  """Protocol-2 pickle of `module.name(arg)`: GLOBAL, the argument, TUPLE1, REDUCE."""
  return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + _unicode(arg) +
          b"\x85R.")


def _write_zip(path, pkl: bytes, records=None):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    for key, raw in (records or {}).items():
      zf.writestr(f"archive/data/{key}", raw)
  return path


@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("posix", "system"), ("subprocess", "check_call"), ("builtins", "eval"),
    ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("importlib", "import_module"), ("os.path", "exists"),
])
@pytest.mark.parametrize("container", ["zip", "legacy_stream"])
def test_malicious_pickle_is_refused_without_executing(tmp_path, module, name, container):
  marker = tmp_path / "pwned"
  cmd = f"touch {marker}" if name in ("system", "check_call") else f"open({str(marker)!r}, 'w')"
  pkl = _call_pickle(module, name, cmd)
  path = tmp_path / "evil.ckpt"
  if container == "zip":
    _write_zip(path, pkl)
  else:
    path.write_bytes(pkl)
  with pytest.raises(torch_zip.UnsafePickleError, match=f"{module}.{name}"):
    torch_zip.load_torch_checkpoint(path)
  assert not marker.exists()


def test_real_reduce_exploit_is_refused(tmp_path):
  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  path = _write_zip(tmp_path / "evil.ckpt", pickle.dumps({"state_dict": Exploit()}, protocol=2))
  with pytest.raises(torch_zip.UnsafePickleError,
                     match=r"refusing to load global (posix|nt|os)\.system: it could execute code"):
    torch_zip.load_torch_checkpoint(path)
  assert not marker.exists()


def test_unknown_class_is_not_imported(tmp_path):
  path = _write_zip(tmp_path / "x.ckpt", _call_pickle("maskvq_not_a_module.sub", "Thing", "a"))
  obj = torch_zip.load_torch_checkpoint(path)
  assert isinstance(obj, torch_zip.Placeholder)
  assert obj.pickle_global == "maskvq_not_a_module.sub.Thing" and obj.args == ("a",)
  assert "maskvq_not_a_module" not in sys.modules


def _tensor_pickle(numel: int, offset: int, size, stride) -> bytes:
  """Pickle of torch._utils._rebuild_tensor_v2 over float storage '0' holding `numel` floats."""
  def ints(values):
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"
  pid = (b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0") +
         _unicode("cpu") + b"J" + struct.pack("<i", numel) + b"tQ")
  return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"J" +
          struct.pack("<i", offset) + ints(size) + ints(stride) + b"\x89)tR.")


def test_hand_built_tensor_reads(tmp_path):
  raw = np.arange(6, dtype="<f4").tobytes()
  path = _write_zip(tmp_path / "t.ckpt", _tensor_pickle(6, 1, (2, 2), (1, 2)), {"0": raw})
  np.testing.assert_array_equal(torch_zip.load_torch_checkpoint(path), [[1, 3], [2, 4]])


def test_out_of_bounds_strides_are_rejected(tmp_path):
  raw = np.arange(4, dtype="<f4").tobytes()
  path = _write_zip(tmp_path / "t.ckpt", _tensor_pickle(4, 1, (10,), (1,)), {"0": raw})
  with pytest.raises(ValueError, match="reaches element 10 of a storage with 4"):
    torch_zip.load_torch_checkpoint(path)


def test_missing_storage_record_is_reported(tmp_path):
  path = _write_zip(tmp_path / "t.ckpt", _tensor_pickle(4, 0, (4,), (1,)))
  with pytest.raises(ValueError, match="archive/data/0 is missing"):
    torch_zip.load_torch_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "junk.bin"
  path.write_bytes(b"hello world, not torch")
  with pytest.raises(ValueError, match="junk.bin: not a torch checkpoint"):
    torch_zip.load_torch_checkpoint(path)
  with pytest.raises(FileNotFoundError, match="nope.ckpt"):
    torch_zip.load_torch_checkpoint(tmp_path / "nope.ckpt")
  empty_zip = tmp_path / "empty.zip"
  with zipfile.ZipFile(empty_zip, "w") as zf:
    zf.writestr("something.txt", "x")
  with pytest.raises(ValueError, match="without data.pkl"):
    torch_zip.load_torch_checkpoint(empty_zip)


def test_state_dict_from_checkpoint_contract():
  a = np.zeros(2, np.float32)
  assert torch_zip.state_dict_from_checkpoint({"w": a})["w"] is a
  assert list(torch_zip.state_dict_from_checkpoint({"state_dict": {"x.w": a}, "epoch": 1})) == [
      "x.w"]
  with pytest.raises(ValueError, match="'epoch', 'int'"):
    torch_zip.state_dict_from_checkpoint({"w": a, "epoch": 1})
  with pytest.raises(ValueError, match="got list"):
    torch_zip.state_dict_from_checkpoint([a])


def test_torchscript_list_builders_allowed_but_torch_jit_refused(tmp_path):
  # TorchScript stores a conv's List[int] padding as torch.jit._pickle.build_intlist([3, 0]).
  pkl = b"\x80\x02ctorch.jit._pickle\nbuild_intlist\n]q\x00(K\x03K\x00e\x85R."
  path = _write_zip(tmp_path / "ts.pt", pkl)
  assert torch_zip.load_torch_checkpoint(path) == [3, 0]
  path = _write_zip(tmp_path / "evil.pt", _call_pickle("torch.jit", "load", "x.pt"))
  with pytest.raises(torch_zip.UnsafePickleError, match="torch.jit.load"):
    torch_zip.load_torch_checkpoint(path)


def test_numpy_values_in_hparams_load(tmp_path):
  hparams = {"lr": np.float64(1.5), "table": np.arange(3, dtype=np.int16), "dt": np.dtype("f4")}
  path = _write_zip(tmp_path / "np.ckpt", pickle.dumps({"hyper_parameters": hparams}, protocol=2))
  got = torch_zip.load_torch_checkpoint(path)["hyper_parameters"]
  assert got["lr"] == 1.5 and isinstance(got["lr"], np.float64)
  np.testing.assert_array_equal(got["table"], [0, 1, 2])
  assert got["dt"] == np.float32
