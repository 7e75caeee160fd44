"""Reads PyTorch checkpoints into numpy without torch and without running code from the file.

Why this exists: the authors publish PyTorch Lightning `.ckpt` files and the FID network ships as a
TorchScript archive, but this project must not depend on torch. Both are `torch.save`-style
archives: a pickle that names tensors by "persistent ids" plus raw storage bytes. A plain
`pickle.load` would import and call whatever the file names (the classic pickle exploit), so the
pickle is read with a restricted unpickler:

* allowed: `collections.OrderedDict`, the `torch._utils` tensor/parameter rebuild functions
  (replaced by our numpy versions), `torch.*Storage` names and torch dtypes (replaced by markers),
  TorchScript's list builders (`torch.jit._pickle.build_intlist`, ...), a few harmless builtins
  and numpy's array reconstructors;
* refused with `UnsafePickleError`: builtins outside that list and modules that can run commands
  or load code (`os`, `subprocess`, `sys`, `importlib`, ...);
* anything else (Lightning callbacks, OmegaConf hparams, TorchScript module classes) becomes a
  `Placeholder` that records its constructor arguments and state and never imports a module.

Formats: the zip format (torch >= 1.6 and TorchScript) and the legacy pickle-stream format of
`torch.save(..., _use_new_zipfile_serialization=False)`. Anything else (e.g. the legacy tar
format) raises `ValueError` naming the file.
"""
import collections
import dataclasses
import io
import os
import pickle
import tarfile
import zipfile
from typing import Any

import numpy as np

from maskvq_jax.core import files

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names a global that could execute code; nothing from it was run."""


@dataclasses.dataclass(frozen=True)
class TorchDtype:
  """Marker for a pickled `torch.<dtype>` global (e.g. `torch.float32`)."""
  name: str


class Placeholder(dict):
  """Stands in for an instance of a class the restricted unpickler does not import.

  It records what the pickle handed it: `args`/`kwargs` (constructor or reduce arguments),
  `state` (the `__setstate__` payload, e.g. a module's attribute dict) and `items` (appended list
  items). Dict items set by the pickle (dict subclasses such as Lightning's AttributeDict) are
  kept as the placeholder's own dict items. The original class name is `pickle_global`.
  """
  pickle_global = "?"

  def __new__(cls, *args, **kwargs):
    obj = dict.__new__(cls)
    obj.args = args
    obj.kwargs = kwargs
    obj.state = None
    obj.items_list = []
    return obj

  def __init__(self, *args, **kwargs):  # pylint: disable=super-init-not-called
    del args, kwargs  # Recorded by __new__; dict.__init__ must not interpret them.

  def __setstate__(self, state):
    self.state = state

  def append(self, item):
    self.items_list.append(item)

  def extend(self, items):
    self.items_list.extend(items)

  def __repr__(self):
    state = type(self.state).__name__
    return f"Placeholder({self.pickle_global}, args={len(self.args)}, state={state})"

  __hash__ = object.__hash__  # Placeholders may be used as dict keys or set members.

  def __eq__(self, other):
    return self is other


# Storage class name -> (numpy dtype code, element size). bfloat16 is read as its raw uint16 bits.
_STORAGE_DTYPES = {
    "FloatStorage": ("float32", 4),
    "DoubleStorage": ("float64", 8),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
    "ComplexFloatStorage": ("complex64", 8),
    "ComplexDoubleStorage": ("complex128", 16),
    "UntypedStorage": ("uint8", 1),
}

# torch dtype global name -> canonical numpy-ish name (bfloat16 handled specially).
_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "complex64": "complex64", "cfloat": "complex64", "complex128": "complex128",
    "cdouble": "complex128",
}

_SAFE_BUILTINS = frozenset({
    "set", "frozenset", "slice", "complex", "bytearray", "bytes", "dict", "list", "tuple", "int",
    "float", "bool", "str", "range", "object",
})

_NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})

# Modules whose globals are refused outright: they run commands, load code or reach the system.
_DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "shutil",
    "socket", "importlib", "runpy", "pickle", "_pickle", "marshal", "types", "ctypes", "code",
    "codeop", "pty", "webbrowser", "io", "_io", "pathlib", "tempfile", "multiprocessing",
    "threading", "_thread", "signal", "platform", "operator", "_operator", "functools", "inspect",
    "pdb", "bdb", "timeit", "asyncio", "commands", "popen2", "codecs", "_codecs", "copyreg",
    "builtins", "__builtin__", "glob", "zipimport", "pkgutil", "site", "urllib", "http", "ftplib",
    "smtplib", "telnetlib", "requests", "eval", "exec", "torch.jit", "torch.hub", "torch.ops",
    "torch.serialization", "torch.utils.cpp_extension", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "setuptools", "distutils", "pip",
})


def _latin1_encode(text, encoding="latin1"):
  """`_codecs.encode` as protocol-2 pickles use it for `bytes`: latin-1 only."""
  if encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
  return text.encode("latin1")


class _Storage:
  """One deserialized storage: its dtype name and flat data (None while only scanning)."""

  def __init__(self, dtype_name: str, numel: int, data: np.ndarray | None):
    self.dtype_name = dtype_name
    self.numel = numel
    self.data = data


def _strided(storage: _Storage, offset: int, size, stride, dtype_name: str | None = None):
  """Materializes a tensor view of `storage` as a contiguous numpy array (bounds checked)."""
  if storage.data is None:
    return None  # First pass of the legacy format: storage bytes not read yet.
  base = storage.data
  name = storage.dtype_name
  if dtype_name is not None and dtype_name != name:  # _rebuild_tensor_v3: untyped byte storage.
    view = "uint16" if dtype_name == "bfloat16" else dtype_name
    if storage.data.dtype != np.uint8:
      raise ValueError(f"tensor dtype {dtype_name} over a typed {name} storage is not supported")
    base = base.view(np.dtype(view))
    name = dtype_name
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(offset)
  if len(size) != len(stride):
    raise ValueError(f"tensor size {size} and stride {stride} have different ranks")
  if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
    raise ValueError(f"bad tensor geometry: offset {offset}, size {size}, stride {stride}")
  if 0 in size:
    out = np.zeros(size, dtype=base.dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= base.size:
      raise ValueError(f"tensor (offset {offset}, size {size}, stride {stride}) reaches element "
                       f"{last} of a storage with {base.size} elements")
    itemsize = base.dtype.itemsize
    out = np.lib.stride_tricks.as_strided(
        base[offset:], shape=size, strides=tuple(s * itemsize for s in stride),
        writeable=False).copy()
  if name == "bfloat16":
    out = (out.astype(np.uint32) << 16).view(np.float32)
  return out


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _strided(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _strided(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, TorchDtype) or dtype.name not in set(_TORCH_DTYPES.values()):
    raise ValueError(f"_rebuild_tensor_v3 with unsupported dtype {dtype!r}")
  return _strided(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state  # Tensor subclasses (e.g. Parameter) become plain arrays.
  return func(*args)


_TORCH_FUNCS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


def _restore_type_tag(value, type_str):
  del type_str  # TorchScript typing hint for containers; the value is already complete.
  return value


# TorchScript archives wrap typed list attributes (e.g. a conv's List[int] padding) in these.
_JIT_PICKLE = {
    "build_intlist": list,
    "build_doublelist": list,
    "build_boollist": list,
    "build_tensorlist": list,
    "build_genericlist": list,
    "restore_type_tag": _restore_type_tag,
}

_PLACEHOLDER_TYPES: dict[tuple[str, str], type] = {}


def _placeholder_type(module: str, name: str) -> type:
  key = (module, name)
  if key not in _PLACEHOLDER_TYPES:
    _PLACEHOLDER_TYPES[key] = type(
        "Placeholder", (Placeholder,), {"pickle_global": f"{module}.{name}"})
  return _PLACEHOLDER_TYPES[key]


def _is_dangerous(module: str) -> bool:
  parts = module.split(".")
  return any(".".join(parts[:i]) in _DANGEROUS_MODULES for i in range(1, len(parts) + 1))


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals; see the module docstring."""

  def __init__(self, file, storages: dict[str, _Storage] | None, read_storage):
    super().__init__(file)
    self._storages = storages if storages is not None else {}
    self._read_storage = read_storage  # (key, dtype_name, numel, itemsize) -> ndarray | None

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) in _TORCH_FUNCS:
      return _TORCH_FUNCS[(module, name)]
    if module == "torch" and name.endswith("Storage"):
      if name not in _STORAGE_DTYPES:
        raise ValueError(f"unsupported storage type torch.{name}")
      return _StorageType(name)
    if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
      return _StorageType("UntypedStorage")
    if module == "torch" and name in _TORCH_DTYPES:
      return TorchDtype(_TORCH_DTYPES[name])
    if module == "torch" and name == "Size":
      return tuple
    if module == "torch.jit._pickle" and name in _JIT_PICKLE:
      return _JIT_PICKLE[name]
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
      return getattr(__import__("builtins"), name)
    if (module, name) == ("_codecs", "encode"):
      return _latin1_encode
    if (module, name) in _NUMPY_GLOBALS:
      return _numpy_global(module, name)
    if module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild"):
      raise ValueError(f"tensor kind {module}.{name} is not supported by this reader")
    if _is_dangerous(module):
      raise UnsafePickleError(
          f"refusing to load global {module}.{name}: it could execute code (nothing was run)")
    return _placeholder_type(module, name)

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    storage_type, key, _, numel = pid[1:5]
    view_metadata = pid[5] if len(pid) > 5 else None
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"persistent id names a non-storage type {storage_type!r}")
    key = key.decode() if isinstance(key, bytes) else str(key)
    if key not in self._storages:
      dtype_name, itemsize = _STORAGE_DTYPES[storage_type.name]
      data = self._read_storage(key, dtype_name, int(numel), itemsize)
      self._storages[key] = _Storage(dtype_name, int(numel), data)
    storage = self._storages[key]
    if view_metadata is not None:  # Very old legacy files: a storage view (key, offset, size).
      _, view_offset, view_size = view_metadata
      data = None if storage.data is None else storage.data[view_offset:view_offset + view_size]
      return _Storage(storage.dtype_name, int(view_size), data)
    return storage


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str


def _numpy_global(module: str, name: str):
  if name == "ndarray":
    return np.ndarray
  if name == "dtype":
    return np.dtype
  # pylint: disable-next=protected-access
  multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
  return getattr(multiarray, name)


def _raw_to_numpy(raw: bytes, dtype_name: str, numel: int, little_endian: bool, what: str):
  code = "uint16" if dtype_name == "bfloat16" else dtype_name
  dtype = np.dtype(code).newbyteorder("<" if little_endian else ">")
  if len(raw) < numel * dtype.itemsize:
    raise ValueError(f"{what}: {len(raw)} bytes, expected {numel * dtype.itemsize}")
  arr = np.frombuffer(raw, dtype=dtype, count=numel)
  return arr.astype(dtype.newbyteorder("="), copy=False)


def _load_zip(path: str, pickle_name: str):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkls = sorted((n for n in names if n == pickle_name or n.endswith("/" + pickle_name)),
                  key=len)
    if not pkls:
      raise ValueError(f"{path}: zip archive without {pickle_name} (entries: {names[:8]}...)")
    prefix = pkls[0][:-len(pickle_name)]
    little = True
    if prefix + "byteorder" in names:
      order = zf.read(prefix + "byteorder").decode().strip()
      if order not in ("little", "big"):
        raise ValueError(f"{path}: unknown byteorder {order!r}")
      little = order == "little"
    data_dir = prefix + pickle_name.rsplit(".", 1)[0] + "/"

    def read_storage(key, dtype_name, numel, itemsize):
      del itemsize
      record = data_dir + key
      if record not in names:
        raise ValueError(f"{path}: storage record {record} is missing")
      return _raw_to_numpy(zf.read(record), dtype_name, numel, little, f"{path}:{record}")

    unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), None, read_storage)
    return unpickler.load()


def _load_legacy(path: str):
  """Legacy stream: magic, protocol, sys_info, main pickle, storage keys, then raw storages."""
  with open(path, "rb") as f:  # local: load_torch_checkpoint copies URLs first
    def next_pickle():
      return _RestrictedUnpickler(f, None, _missing_storage(path)).load()

    magic = next_pickle()
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path}: not a torch checkpoint (bad legacy magic number {magic!r})")
    protocol = next_pickle()
    if protocol != _LEGACY_PROTOCOL:
      raise ValueError(f"{path}: unsupported legacy torch protocol {protocol!r}")
    sys_info = next_pickle()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    main_start = f.tell()
    # Pass 1: learn which storages exist (tensors come out as None), then read their bytes.
    scanned: dict[str, _Storage] = {}
    _RestrictedUnpickler(f, scanned, lambda *a: None).load()
    keys = next_pickle()
    if not isinstance(keys, list):
      raise ValueError(f"{path}: corrupt legacy checkpoint (storage key list is {type(keys)})")
    storages = {}
    for key in keys:
      key = str(key)
      if key not in scanned:
        raise ValueError(f"{path}: storage {key} listed but never referenced")
      info = scanned[key]
      itemsize = _STORAGE_DTYPES_BY_DTYPE[info.dtype_name]
      count = int.from_bytes(f.read(8), "little" if little else "big", signed=True)
      raw = f.read(count * itemsize)
      storages[key] = _Storage(info.dtype_name, count,
                               _raw_to_numpy(raw, info.dtype_name, count, little,
                                             f"{path}: storage {key}"))
    # Pass 2: rebuild with the real storages.
    f.seek(main_start)
    return _RestrictedUnpickler(f, storages, _missing_storage(path)).load()


_STORAGE_DTYPES_BY_DTYPE = {dtype: size for dtype, size in _STORAGE_DTYPES.values()}


def _missing_storage(path):
  def read(key, *unused):
    raise ValueError(f"{path}: storage {key} is referenced but not stored")
  return read


def load_torch_checkpoint(path: str | os.PathLike, *, pickle_name: str = "data.pkl") -> Any:
  """Loads a `torch.save` / Lightning `.ckpt` / TorchScript file with tensors as numpy arrays.

  Args:
    path: the file (local or a URL such as gs://..., then copied to a local temp file first).
      Zip archives (torch >= 1.6, TorchScript) and the legacy pickle stream work.
    pickle_name: which pickle of a zip archive to read (TorchScript also has `constants.pkl`).

  Returns:
    The unpickled object (for a Lightning checkpoint a dict with "state_dict", "epoch", ...).
    Tensors are C-contiguous numpy arrays (bfloat16 widened exactly to float32); objects of
    classes that are not imported are `Placeholder`s.

  Raises:
    UnsafePickleError: the pickle names a global that could execute code.
    ValueError: unsupported or corrupt file.
  """
  path = os.fspath(path)
  if not files.isfile(path):
    raise FileNotFoundError(f"torch checkpoint not found: {path}")
  path = files.local_input(path)  # from here on a local file (zipfile, the legacy stream reader)
  if zipfile.is_zipfile(path):
    return _load_zip(path, pickle_name)
  with open(path, "rb") as f:
    head = f.read(16)
  if head[:1] == b"\x80":
    return _load_legacy(path)
  if tarfile.is_tarfile(path):
    raise ValueError(f"{path}: legacy tar-format torch archive is not supported; re-save it "
                     "with a torch >= 1.6 torch.save (zip format)")
  raise ValueError(f"{path}: not a torch checkpoint (starts with {head!r}); expected a zip "
                   "archive or a legacy torch pickle")


def state_dict_from_checkpoint(obj: Any) -> dict[str, np.ndarray]:
  """Returns `obj["state_dict"]` if present, else `obj` itself; it must map str -> array."""
  if isinstance(obj, dict) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"expected a dict state_dict, got {type(obj).__name__}")
  bad = [(k, type(v).__name__) for k, v in obj.items()
         if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise ValueError(f"state_dict must map str -> array; offending entries: {bad[:5]}")
  return dict(obj)


def flatten_arrays(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, np.ndarray]:
  """All arrays reachable through dicts, lists, tuples and placeholder state, keyed by path.

  Useful for TorchScript archives, whose modules unpickle as placeholders holding their
  attributes (e.g. "net.layers.conv.weight").
  """
  out: dict[str, np.ndarray] = {}

  def walk(node, name):
    if isinstance(node, np.ndarray):
      out[name] = node
      return
    if isinstance(node, Placeholder):
      walk(node.state, name)
    if isinstance(node, dict):
      for key, value in node.items():
        walk(value, f"{name}{sep}{key}" if name else str(key))
    elif isinstance(node, (list, tuple)):
      for i, value in enumerate(node):
        walk(value, f"{name}{sep}{i}" if name else str(i))

  walk(obj, prefix)
  return out
