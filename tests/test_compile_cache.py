"""Persistent compilation cache set-up (core/compile_cache.py): directories, on/off, a real hit."""
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from configs import quickstart
from configs import quickstart_stage2
from maskvq_jax.core import compile_cache

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_jax_cache_config():
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {k: getattr(jax.config, k) for k in keys}
  yield
  for k, v in old.items():
    jax.config.update(k, v)


def test_cache_dir_values():
  home = os.path.expanduser("~")
  assert compile_cache.cache_dir("auto", {}) == f"{home}/.cache/maskvq_jax/xla"
  assert compile_cache.cache_dir("auto", {"MASKVQ_CACHE": "/data/c/"}) == "/data/c/xla"
  assert compile_cache.cache_dir("auto", {"MASKVQ_CACHE": "gs://b/c"}) == "gs://b/c/xla"
  assert compile_cache.cache_dir("", {"MASKVQ_CACHE": "/data/c"}) is None
  assert compile_cache.cache_dir("~/x", {}) == f"{home}/x"
  assert compile_cache.cache_dir("gs://bucket/~x", {}) == "gs://bucket/~x"  # URLs untouched


def test_configs_default_to_auto():
  assert quickstart.get_config(None).compile_cache_dir == "auto"
  assert quickstart_stage2.get_config(None).compile_cache_dir == "auto"


def test_off_for_multiprocess_cpu(restore_jax_cache_config, tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  assert compile_cache.enable(str(tmp_path / "x"), platform="cpu", process_count=2) is None
  assert not jax.config.jax_compilation_cache_dir
  assert compile_cache.enable("", platform="gpu", process_count=1) is None


def test_auto_keeps_a_directory_given_to_jax(restore_jax_cache_config, tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert compile_cache.enable("auto", platform="cpu", process_count=1) == str(tmp_path / "mine")


def test_unwritable_directory_turns_the_cache_off_with_a_warning(restore_jax_cache_config,
                                                                tmp_path, caplog):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  jax.config.update("jax_compilation_cache_dir", None)
  with caplog.at_level("WARNING"):
    assert compile_cache.enable(str(blocker / "xla"), platform="cpu", process_count=1) is None
  assert not jax.config.jax_compilation_cache_dir
  notes = [r.getMessage() for r in caplog.records if "compilation cache off" in r.getMessage()]
  assert len(notes) == 1 and str(blocker / "xla") in notes[0], notes
  # a writable one is created and used
  assert compile_cache.enable(str(tmp_path / "new" / "xla"), platform="cpu",
                              process_count=1) == str(tmp_path / "new" / "xla")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "new" / "xla")
  assert os.listdir(tmp_path / "new" / "xla") == []  # the write probe is gone


def test_entries_are_written_then_read_by_a_new_process(tmp_path):
  """In fresh processes (JAX initialises its cache once per process, at the first compile)."""
  path = str(tmp_path / "xla")
  code = (
      "import jax, jax.numpy as jnp\n"
      "from maskvq_jax.core import compile_cache\n"
      f"assert compile_cache.enable({path!r}) == {path!r}\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "jax.config.update('jax_log_compiles', True)\n"  # logs cache hits as warnings
      "f = jax.jit(lambda x: jnp.sin(x) * 3.25 + jnp.cos(x) ** 7)\n"
      "f(jnp.arange(13.0)).block_until_ready()\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("XLA_FLAGS", None)
  first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "Persistent compilation cache hit" not in first.stderr
  entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
  assert entries, "nothing written to the cache"
  stamp = {e: os.path.getmtime(os.path.join(path, e)) for e in entries}
  second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Persistent compilation cache hit" in second.stderr
  assert sorted(e for e in os.listdir(path) if not e.startswith(".")) == entries  # hit: no new
  assert all(os.path.getmtime(os.path.join(path, e)) == t for e, t in stamp.items())
