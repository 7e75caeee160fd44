"""A fake remote filesystem for tests: `fake://<bucket>/<path>` URLs stored under a local root.

Why: the trainers, the token export and the sampling / evaluation CLIs must keep a URL workdir
(gs://...) a URL end to end. Real buckets are out of reach in tests, so this mounts one URL scheme
in the three I/O stacks the project writes through, each translating `fake://x` to `<root>/x`:
  * etils.epath (the project's path helper `core/files.py`, Orbax's directory and metadata work):
    a registered Path class with a translating os backend;
  * TensorStore (Orbax's array data): Orbax's kvstore-spec builder;
  * TensorFlow (TensorBoard summaries through CLU): `tf.summary.create_file_writer`.
If project code turned such a URL into a local path (`os.path.abspath("fake://b/x")` ->
`<cwd>/fake:/b/x`) or wrote it with `open`/`os`, the files would land under the working directory
instead of the root, which is what the tests check. `mounted(root)` patches this process for the
duration of a `with` block (in-process runs only; subprocesses do not see the scheme).
"""
import contextlib
import os

from etils.epath import backend as backend_lib
from etils.epath import gpath

SCHEME = "fake"
PREFIX = SCHEME + "://"


class _Backend(backend_lib.Backend):
  """The os backend on translated paths; paths handed back (glob, walk) are URLs again."""

  def __init__(self, root: str):
    self.root = root
    self.os = backend_lib.os_backend

  def local(self, path) -> str:
    path = os.fspath(path)
    if not path.startswith(PREFIX):
      raise ValueError(f"not a {PREFIX} URL: {path!r}")
    return os.path.join(self.root, path[len(PREFIX):])

  def url(self, local: str) -> str:
    return PREFIX + os.path.relpath(local, self.root)

  def open(self, path, mode):
    return self.os.open(self.local(path), mode)

  def exists(self, path):
    return self.os.exists(self.local(path))

  def isdir(self, path):
    return self.os.isdir(self.local(path))

  def listdir(self, path):
    return self.os.listdir(self.local(path))

  def glob(self, path):
    return [self.url(p) for p in self.os.glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, names in self.os.walk(self.local(top), top_down=top_down, on_error=on_error):
      yield self.url(os.fspath(root)), dirs, names

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return self.os.makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return self.os.mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return self.os.rmtree(self.local(path))

  def remove(self, path):
    return self.os.remove(self.local(path))

  def rename(self, path, dst):
    return self.os.rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return self.os.replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    return self.os.copy(self.local(path), self.local(dst), overwrite)

  def stat(self, path):
    return self.os.stat(self.local(path))


_BACKEND: _Backend | None = None


class FakePath(gpath.PosixGPath):
  """epath.Path of a `fake://` URL (parsed like gs:// URLs: `/fake/<bucket>/...` internally)."""

  @property
  def _backend(self):
    if self._uri_scheme == SCHEME:
      if _BACKEND is None:
        raise RuntimeError(f"{PREFIX} used outside fake_remote.mounted()")
      return _BACKEND
    return self.os._backend


@contextlib.contextmanager
def _patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


@contextlib.contextmanager
def mounted(root: str):
  """Within the block, `fake://x` is `<root>/x` for epath, Orbax/TensorStore and TensorFlow."""
  global _BACKEND
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from orbax.checkpoint._src.serialization import tensorstore_utils  # pylint: disable=import-outside-toplevel

  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  be = _Backend(root)
  to_local = lambda p: be.local(p) if isinstance(p, str) and p.startswith(PREFIX) else p
  orig_norm = tensorstore_utils._normalize_path  # pylint: disable=protected-access
  orig_writer = tf.summary.create_file_writer
  from etils.epath import register  # pylint: disable=import-outside-toplevel
  with contextlib.ExitStack() as stack:
    stack.enter_context(_patched(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + (PREFIX,)))  # pylint: disable=protected-access
    stack.enter_context(_patched(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {SCHEME}))  # pylint: disable=protected-access
    stack.enter_context(_patched(gpath, "_URI_MAP_ROOT", {**gpath._URI_MAP_ROOT, PREFIX: f"/{SCHEME}/"}))  # pylint: disable=protected-access
    stack.enter_context(_patched(register, "_URI_PREFIXES_TO_CLS", {**register._URI_PREFIXES_TO_CLS, PREFIX: FakePath}))  # pylint: disable=protected-access
    stack.enter_context(_patched(tensorstore_utils, "_normalize_path", lambda p: orig_norm(to_local(p))))
    stack.enter_context(_patched(tf.summary, "create_file_writer",
                                 lambda logdir, *a, **k: orig_writer(to_local(logdir), *a, **k)))
    _BACKEND = be
    try:
      yield be
    finally:
      _BACKEND = None
