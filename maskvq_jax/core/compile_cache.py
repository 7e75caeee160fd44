"""The persistent XLA compilation cache: where it lives and when `main` turns it on.

`config.compile_cache_dir`:
  "auto" (default)  `$MASKVQ_CACHE/xla`, else `~/.cache/maskvq_jax/xla`; a cache directory already
                    given to JAX (JAX_COMPILATION_CACHE_DIR) is kept
  ""                off
  anything else     that directory (local, or a URL such as gs://bucket/xla shared by all hosts)

A local directory that cannot be created or written (a read-only mount, a path through a file)
turns the cache off with one logged warning naming it; the run goes on compiling as without a
cache (JAX itself would only warn about an unreadable entry once and never store anything).

Restarted and requeued runs then load their train / eval steps instead of compiling them again.
JAX writes entries from process 0 only and keys them by HLO, devices, flags and versions.

Off in multi-process runs on CPU (several processes on one machine, gloo collectives, as in
launch/local_multiprocess.sh and tests/test_multiprocess.py): one process loading a step from the
cache while the other still compiles it reaches the first collective tens of seconds earlier, and
gloo's fixed 30 s context set-up then fails (seen in that test). Accelerator runs are not affected
(their collectives wait), and single-process CPU runs are safe.
"""
import os
import socket
import uuid
from typing import Optional

from absl import logging
import jax

from maskvq_jax.core import files


def cache_dir(value: str, environ=None) -> Optional[str]:
  """`config.compile_cache_dir` -> the directory to use, or None for off."""
  environ = os.environ if environ is None else environ
  if not value:
    return None
  if value == "auto":
    return files.join(files.cache_root(environ), "xla")
  return value if "://" in value else os.path.expanduser(value)


def enable(value: str, *, platform: Optional[str] = None,
           process_count: Optional[int] = None) -> Optional[str]:
  """Points JAX's persistent cache at `cache_dir(value)` (see the module docstring for when not).

  Returns the directory in use, or None.
  """
  platform = platform or jax.default_backend()
  process_count = jax.process_count() if process_count is None else process_count
  if platform == "cpu" and process_count > 1:
    if jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", None)
    logging.info("persistent compilation cache off: %d CPU processes (gloo collectives)",
                 process_count)
    return None
  if value == "auto" and jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir  # set by the user (JAX_COMPILATION_CACHE_DIR)
  path = cache_dir(value)
  if path is None:
    return None
  problem = None if "://" in path else _unwritable(path)
  if problem:
    logging.warning("persistent compilation cache off: cannot write to %s (%s); set "
                    "--config.compile_cache_dir to a writable directory, or '' for none",
                    path, problem)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  logging.info("persistent compilation cache: %s", path)
  return path


def _unwritable(path: str) -> Optional[str]:
  """Why the local directory `path` cannot hold cache entries (created if missing), or None."""
  # unique per host and call: hosts sharing the directory (an NFS home) may share pids
  probe = files.join(path, f".write_test_{socket.gethostname()}_{uuid.uuid4().hex}")
  try:
    files.makedirs(path)
    files.write_bytes(probe, b"")
    files.remove(probe, missing_ok=True)
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None
