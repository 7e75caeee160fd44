"""The one path helper for every user-given location: local paths or URLs (gs://bucket/...).

Workdirs, `resume`, tokenizers, `tokens_dir`, sample folders, reports, figures and the statistics
cache may all live in a bucket on a pod. `os.path.abspath("gs://b/run")` silently turns a bucket
path into `<cwd>/gs:/b/run` (each TPU worker would then write to its own disk), so project code
never calls `os.path` / `os.makedirs` / builtin `open` / `glob` on such a path: it calls these
helpers (`tests/test_paths.py` enforces it). Local paths are made absolute and written atomically
(tmp file + rename); URLs are kept as given end to end and go through `etils.epath` (whose GCS
object writes are atomic already), as do Orbax and TensorBoard, which get the same strings.

Libraries that only read or write local files (ArrayRecord) use `staged_output` / `local_input`:
a local scratch copy in the temp directory, uploaded / downloaded whole.
"""
import atexit
import builtins
import contextlib
import fnmatch
import hashlib
import io
import json
import os
import posixpath
import shutil
import tempfile
from typing import Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]


# ----- names -------------------------------------------------------------------------------------
def is_remote(path: PathLike) -> bool:
  """True for a URL (`scheme://...`), False for a local path."""
  return "://" in os.fspath(path)


def absolute(path: PathLike) -> str:
  """Local paths made absolute (`~` expanded; `file:///x` is the local `/x`); URLs kept, less a
  trailing `/` (`gs://b/run/` -> `gs://b/run`, as abspath does locally and `join` does anyway)."""
  path = os.fspath(path)
  if path.startswith("file://"):
    path = path[len("file://"):] or "/"
  if is_remote(path):
    scheme, rest = _split_url(path)
    return scheme + rest.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


CACHE_ENV = "MASKVQ_CACHE"
DEFAULT_CACHE = "~/.cache/maskvq_jax"


def cache_root(environ=None, *, local: bool = False) -> str:
  """The project's cache directory (absolute, not created): `$MASKVQ_CACHE`, else
  `~/.cache/maskvq_jax`. The one place of that rule for every cache (compilation cache, weights,
  reference statistics, datasets).

  `$MASKVQ_CACHE` may be a URL (a bucket shared by the hosts of a pod). local=True is for files
  only local code can use (pip-downloaded weights, ArrayRecord datasets): a URL there is passed
  over for the local default.
  """
  environ = os.environ if environ is None else environ
  root = environ.get(CACHE_ENV, "")
  if not root or (local and is_remote(root)):
    root = DEFAULT_CACHE
  return absolute(root)


def user_location(path: PathLike, what: str) -> str:
  """A user-given location checked and made absolute (`absolute`), before anything is written.

  Raises:
    ValueError: an empty path, or a URL scheme no filesystem is registered for (names `what`).
  """
  path = os.fspath(path)
  if not path:
    raise ValueError(f"{what}: empty path")
  path = absolute(path)
  if is_remote(path):
    try:
      epath.Path(path)
    except KeyError:
      scheme = _split_url(path)[0]
      raise ValueError(f"{what}={path!r}: no filesystem for {scheme} URLs (use a local path, "
                       "file://, gs:// or another scheme etils.epath knows)") from None
  return path


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...`; a URL stays a URL (no normalisation of its `scheme://`)."""
  base = os.fspath(base)
  if not is_remote(base):
    return os.path.join(base, *parts)
  out = base
  for p in parts:
    out = out.rstrip("/") + "/" + p.lstrip("/") if p else out
  return out


def _split_url(path: str) -> tuple[str, str]:
  scheme, rest = path.split("://", 1)
  return scheme + "://", rest


def parent(path: PathLike) -> str:
  """The directory holding `path` (`gs://b/x/y` -> `gs://b/x`)."""
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.dirname(path)
  scheme, rest = _split_url(path.rstrip("/"))
  return scheme + posixpath.dirname(rest)


def basename(path: PathLike) -> str:
  """The last component of `path`, ignoring a trailing slash."""
  path = os.fspath(path).rstrip("/")
  return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


def with_suffix(path: PathLike, suffix: str) -> str:
  """`path` with the extension of its last component replaced by `suffix` (e.g. ".png")."""
  path = os.fspath(path).rstrip("/")
  name = basename(path)
  head = path[:len(path) - len(name)]
  stem = name[:name.rindex(".")] if "." in name.lstrip(".") else name
  return head + stem + suffix


def relative_to(path: PathLike, base: PathLike) -> str:
  """`path` relative to the directory `base` ('/'-separated for URLs); ValueError if outside."""
  path, base = os.fspath(path), os.fspath(base)
  if not is_remote(path) and not is_remote(base):
    rel = os.path.relpath(path, base)
  else:
    prefix = base.rstrip("/") + "/"
    rel = path[len(prefix):] if path.startswith(prefix) else os.pardir
  if rel == os.pardir or rel.startswith(os.pardir + os.sep):
    raise ValueError(f"{path} is not under {base}")
  return rel


def _p(path: PathLike) -> epath.Path:
  return epath.Path(absolute(path))


# ----- queries -----------------------------------------------------------------------------------
def exists(path: PathLike) -> bool:
  return _p(path).exists()


def isdir(path: PathLike) -> bool:
  return _p(path).is_dir()


def isfile(path: PathLike) -> bool:
  return _p(path).is_file()


def listdir(path: PathLike) -> list[str]:
  """Sorted names (not paths) of the entries of the directory `path`."""
  return sorted(p.name for p in _p(path).iterdir())


def glob(directory: PathLike, pattern: str = "*", *, recursive: bool = False) -> list[str]:
  """Sorted paths (URLs stay URLs) of the entries of `directory` whose name matches `pattern`.

  Non-recursive: the directory's own entries (`pattern` may hold `dir/*.npz`-style components).
  Recursive: files at any depth below `directory` whose base name matches `pattern` (a walk, which
  works on local disks and buckets alike; `**` patterns are not used).
  """
  directory = absolute(directory)
  d = epath.Path(directory)
  if not d.is_dir():
    return []
  if not recursive:
    return sorted(os.fspath(p) for p in d.glob(pattern))
  out = []
  for root, _, names in d.walk():
    out += [join(os.fspath(root), n) for n in names if fnmatch.fnmatch(n, pattern)]
  return sorted(out)


# ----- changes -----------------------------------------------------------------------------------
def makedirs(path: PathLike) -> str:
  """Creates the directory `path` and its parents (no-op if it exists). Returns its absolute form."""
  path = absolute(path)
  epath.Path(path).mkdir(parents=True, exist_ok=True)
  return path


def remove(path: PathLike, *, missing_ok: bool = False):
  """Deletes the file `path`."""
  _p(path).unlink(missing_ok=missing_ok)


def rmtree(path: PathLike):
  """Deletes the directory `path` and everything below it."""
  _p(path).rmtree()


def replace(src: PathLike, dst: PathLike):
  """Renames the file or directory `src` to `dst`, replacing a file `dst`."""
  _p(src).replace(_p(dst))


def open(path: PathLike, mode: str = "r"):  # pylint: disable=redefined-builtin
  """A file object for `path` ("r", "rb", "w", "wb", "a"); text is UTF-8. Writes are not atomic:
  use `write_bytes` / `write_text` for whole files."""
  return _p(path).open(mode)


def read_bytes(path: PathLike) -> bytes:
  return _p(path).read_bytes()


def read_text(path: PathLike) -> str:
  return _p(path).read_text()


def read_json(path: PathLike):
  """The JSON document at `path`, or None when there is no such file."""
  return json.loads(read_text(path)) if exists(path) else None


def write_bytes(path: PathLike, data: bytes) -> str:
  """Writes a whole file (creating its directory), atomically. Returns the absolute path."""
  path = absolute(path)
  if is_remote(path):
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".partial"
  with builtins.open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
  return path


def write_text(path: PathLike, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def save_png(path: PathLike, array) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return write_bytes(path, buf.getvalue())


def save_npz(path: PathLike, **arrays) -> str:
  import numpy as np  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return write_bytes(path, buf.getvalue())


# ----- local-only libraries ----------------------------------------------------------------------
@contextlib.contextmanager
def staged_output(path: PathLike) -> Iterator[str]:
  """For writers that need a local file: yields a local path to write; on success it becomes
  `path` (local: `<path>.partial` renamed; URL: a temp file uploaded, then deleted). On an
  exception nothing appears at `path`."""
  path = absolute(path)
  if not is_remote(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".partial"
    yield tmp
    os.replace(tmp, path)
    return
  scratch = tempfile.mkdtemp(prefix="maskvq_stage_")
  try:
    local = os.path.join(scratch, basename(path))
    yield local
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with builtins.open(local, "rb") as src, p.open("wb") as dst:
      shutil.copyfileobj(src, dst, 8 << 20)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


_STAGED: dict[str, str] = {}
_STAGE_DIR: list[str] = []


def local_input(path: PathLike) -> str:
  """For readers that need a local file: `path` itself if local, else a local copy downloaded
  once per process into the temp directory (removed at exit)."""
  path = absolute(path)
  if not is_remote(path):
    return path
  if path not in _STAGED:
    if not _STAGE_DIR:
      _STAGE_DIR.append(tempfile.mkdtemp(prefix="maskvq_inputs_"))
      atexit.register(shutil.rmtree, _STAGE_DIR[0], True)
    key = hashlib.sha1(path.encode()).hexdigest()[:16]
    local = os.path.join(_STAGE_DIR[0], f"{key}_{basename(path)}")
    with epath.Path(path).open("rb") as src, builtins.open(local + ".partial", "wb") as dst:
      shutil.copyfileobj(src, dst, 8 << 20)
    os.replace(local + ".partial", local)
    _STAGED[path] = local
  return _STAGED[path]
