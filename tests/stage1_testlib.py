"""Shared bits of the stage-1 trainer tests: the tiny config and a persistent XLA cache.

The persistent compilation cache makes repeated `train()` calls with the same config (resume
tests, reruns) skip XLA compilation; entries are keyed by HLO and versions, so it is safe to share
across runs.
"""
import os
import tempfile

import jax

from configs import quickstart


def enable_compile_cache():
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(tempfile.gettempdir(), "maskvq_jax_test_xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def tiny(arg="", **overrides):
  """`configs/quickstart.py:tiny,perceptual=0[,arg]` with dotted-key overrides."""
  c = quickstart.get_config("tiny,perceptual=0" + ("," + arg if arg else ""))
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
