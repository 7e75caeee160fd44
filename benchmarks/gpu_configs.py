r"""The training configs of the accelerator check, as JSON that needs no ml_collections to read.

The GPU/TPU image has jax, flax, optax, orbax and numpy but not ml_collections (nor TensorFlow,
clu, grain). The check runs the trainers' own steps from the real configs, so the configs are
evaluated here, on a machine with the full environment, and written to benchmarks/gpu_configs/:

  python benchmarks/gpu_configs.py          # rewrite the JSON files (commit them)
  python benchmarks/gpu_configs.py --check  # exit 1 if a file differs from what the configs give

  stackformer_ffhq256  configs/stackformer_ffhq256.py:keep=0.25 resolved (stage2/trainer.py
                       resolve_config) against the tokenizer of configs/mqvae_ffhq256.py:keep=0.25:
                       the 307.6M Stackformer, K = 256 of 32 x 32 positions, vocabulary 1025
  mqvae_ffhq256        configs/mqvae_ffhq256.py (256 px, keep 0.30, LPIPS + PatchGAN)
  stackformer_small    the same stage-2 config at toy sizes (d 64, 4 heads, 2 + 2 layers, sampling
                       top_k 32) on the runlocal tokenizer (32 px, K = 64 of 16 x 16, 64 codes):
                       the CPU smoke run
  mqvae_small          configs/mqvae_ffhq256.py:runlocal (32 px, the CPU-sized stage-1 model)

Each file holds {"source": how it was made, "config": the config as a dict, "tokenizer": the
stage-1 model kwargs (stage-2 files: the Stackformer's token geometry)}. `load(name)` reads one
on the device side into `Config`, a dict with attribute access and the few ConfigDict methods the
trainers call (`get`, `to_dict`, `update`); JSON lists come back as tuples (the configs' tuples).
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "gpu_configs")
NAMES = ("stackformer_ffhq256", "mqvae_ffhq256", "stackformer_small", "mqvae_small")
TOY_STACKFORMER = dict(d_model=64, n_heads=4, code_layers=2, position_layers=2)
TOY_SAMPLE = dict(top_k=32)  # the runlocal tokenizer has 64 codes (the configs' top_k is 100)


class Config(dict):
  """A nested dict read like an ml_collections.ConfigDict (attribute access, get, to_dict)."""

  def __init__(self, *args, **kwargs):
    super().__init__()
    self.update(*args, **kwargs)

  def update(self, *args, **kwargs):  # pylint: disable=arguments-differ
    for k, v in dict(*args, **kwargs).items():
      self[k] = _wrap(v)

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(f"config has no field {name!r}") from None

  def __setattr__(self, name, value):
    self[name] = _wrap(value)

  def to_dict(self) -> dict:
    return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def _wrap(v):
  if isinstance(v, dict) and not isinstance(v, Config):
    return Config(v)
  if isinstance(v, (list, tuple)):
    return tuple(_wrap(x) for x in v)
  return v


def load(name: str) -> tuple[Config, Config]:
  """(config, tokenizer model kwargs) of benchmarks/gpu_configs/<name>.json."""
  if name not in NAMES:
    raise ValueError(f"gpu config {name!r}; choose one of {NAMES}")
  with open(os.path.join(DIR, f"{name}.json")) as f:
    d = json.load(f)
  return Config(d["config"]), Config(d["tokenizer"])


# ----------------------------------------------------------------------------- CPU side
def _plain(v):
  """ConfigDict.to_dict() output -> JSON-able (tuples as lists)."""
  if isinstance(v, dict):
    return {k: _plain(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  return v


def build_all() -> dict:
  """{name: JSON-able dict} from the configs (imports ml_collections and the config files)."""
  sys.path.insert(0, os.path.dirname(HERE))  # repo root: `configs` and `maskvq_jax`
  from configs import mqvae_ffhq256  # pylint: disable=g-import-not-at-top
  from configs import stackformer_ffhq256  # pylint: disable=g-import-not-at-top
  from maskvq_jax.models import mqvae as mqvae_lib  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage2 import trainer as stage2  # pylint: disable=g-import-not-at-top

  def stage2_file(stage1_arg, toy):
    tok_cfg = mqvae_ffhq256.get_config(stage1_arg)
    tokenizer = mqvae_lib.MQVAE(**tok_cfg.model.to_dict())
    c = stackformer_ffhq256.get_config("keep=0.25")
    c.tokenizer = "tokenizer"  # resolve_config needs a name; the check feeds tokens, loads none
    if toy:
      c.model.update(TOY_STACKFORMER)
      c.sample.update(TOY_SAMPLE)
    c = stage2.resolve_config(c, tokenizer)
    c.tokenizer = ""
    src = "configs/stackformer_ffhq256.py:keep=0.25" + (
        f", model {TOY_STACKFORMER}, sample {TOY_SAMPLE}" if toy else "")
    return dict(source=f"{src}; resolved on the tokenizer of configs/mqvae_ffhq256.py:{stage1_arg}",
                config=_plain(c.to_dict()), tokenizer=_plain(tok_cfg.model.to_dict()))

  def stage1_file(arg):
    c = mqvae_ffhq256.get_config(arg)
    return dict(source=f"configs/mqvae_ffhq256.py{':' + arg if arg else ''}",
                config=_plain(c.to_dict()), tokenizer=_plain(c.model.to_dict()))

  return {"stackformer_ffhq256": stage2_file("keep=0.25", False),
          "mqvae_ffhq256": stage1_file(""),
          "stackformer_small": stage2_file("keep=0.25,runlocal", True),
          "mqvae_small": stage1_file("runlocal")}


def _text(d: dict) -> str:
  return json.dumps(d, indent=1, sort_keys=True) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--check", action="store_true", help="compare instead of writing")
  args = ap.parse_args(argv)
  stale = []
  for name, d in build_all().items():
    path = os.path.join(DIR, f"{name}.json")
    if args.check:
      old = open(path).read() if os.path.exists(path) else None
      if old != _text(d):
        stale.append(name)
    else:
      os.makedirs(DIR, exist_ok=True)
      with open(path, "w") as f:
        f.write(_text(d))
      print(f"wrote {path}")
  if stale:
    print(f"stale: {', '.join(stale)} (run python benchmarks/gpu_configs.py)", file=sys.stderr)
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main())
