"""Trainer registry: `config.trainer` -> module with `train(config, workdir)`.

Modules are imported lazily so `main.py` only loads the trainer it runs.
"""
import importlib

TRAINERS = {"mqvae": "maskvq_jax.stage1.trainer", "stackformer": "maskvq_jax.stage2.trainer",
            "dense_gpt": "maskvq_jax.stage2.trainer"}  # the dense baseline: stage2/dense.py


def get(name: str):
  if name not in TRAINERS:
    raise ValueError(f"unknown trainer {name!r}; registered: {sorted(TRAINERS)}")
  return importlib.import_module(TRAINERS[name])
