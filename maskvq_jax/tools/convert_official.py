r"""Converts an official MQ-VAE checkpoint (or a golden .npz) into our Orbax tokenizer format.

  python -m maskvq_jax.tools.convert_official --ckpt last.ckpt --config mqvae_imagenet_f8_r30.yml --out DIR
  python -m maskvq_jax.tools.convert_official --ckpt ../shared/golden/official_small.npz --out DIR

`--ckpt` is a Lightning `.ckpt` (a torch zip archive, read without torch) or a golden `.npz` whose
`sd/*` arrays are the state dict. `--config` is the official YAML; for a golden file it defaults to
its `meta/config_json`. Stage-1 configs (`MaskedVectorQuantizationModel`) and the first stage of
stage-2 configs (`first_stage_config`, keys `first_stage_model.*`) are both accepted. Unknown or
missing tensors are listed in one error, and nothing is written then. An existing DIR step is never
overwritten. Restore with `maskvq_jax.data.tokenizer.load_tokenizer(DIR)`. Those mistakes, and a
missing or unreadable file, are one `error:` line (exit 2).
"""
import argparse
import json
import sys
from typing import Any

import numpy as np

from maskvq_jax.core import cli
from maskvq_jax.core import files

STAGE2_ROOTS = ("transformer.", "class_transformer.")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".npz"):
    with np.load(path) as z:
      return {k[3:]: z[k] for k in z.files if k.startswith("sd/")}
  from maskvq_jax.tools import torch_zip
  return torch_zip.state_dict_from_checkpoint(torch_zip.load_torch_checkpoint(path))


def read_official_config(config_path: str | None, ckpt_path: str) -> tuple[dict, str]:
  """Returns (the MaskedVectorQuantizationModel params, the state-dict key prefix)."""
  if config_path is None:
    if not ckpt_path.endswith(".npz"):
      raise ValueError("--config (the official YAML) is required for a .ckpt checkpoint")
    with np.load(ckpt_path) as z:
      if "meta/config_json" not in z.files:
        raise ValueError(f"{ckpt_path} has no meta/config_json; pass --config")
      return json.loads(str(z["meta/config_json"]))["vae_config"]["params"], ""
  import yaml
  cfg: Any = yaml.safe_load(files.read_text(config_path))
  model = cfg.get("model", cfg)
  params = model.get("params", {})
  if "first_stage_config" in params:
    return params["first_stage_config"]["params"], "first_stage_model."
  if "encoder_config" in params:
    return params, ""
  raise ValueError(f"{config_path}: neither a stage-1 MQ-VAE config nor a stage-2 config with first_stage_config")


def convert(ckpt: str, config: str | None, out: str, step: int = 0) -> str:
  from maskvq_jax.parity import convert_mqvae as convert_lib
  from maskvq_jax.data import tokenizer as tokenizer_io
  from maskvq_jax.models import MQVAE
  # The user's files: missing, unreadable, or not an MQ-VAE of this shape -> one-line errors.
  with cli.user_input(ValueError, OSError):
    local_ckpt = files.local_input(ckpt)  # the readers need a local file: URLs are copied first
    vae_params, prefix = read_official_config(config, local_ckpt)
    kwargs = convert_lib.mqvae_kwargs_from_official(vae_params)
  model = MQVAE(**kwargs)
  with cli.user_input(ValueError, OSError):
    sd = read_state_dict(local_ckpt)
  if not prefix:  # a golden file also holds the Stackformers' tensors: they are not the tokenizer's
    sd = {k: v for k, v in sd.items() if not k.startswith(STAGE2_ROOTS)}
  with cli.user_input():  # missing / unknown tensors, listed
    variables = convert_lib.convert_state_dict(sd, convert_lib.abstract_variables(model),
                                               kwargs["scorer"], prefix)
  with cli.user_input(FileExistsError):  # an existing step of --out is never overwritten
    return tokenizer_io.save_tokenizer(
        out, variables, kwargs, step=step,
        extra_meta={"source": {"checkpoint": ckpt, "config": config}})


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ckpt", required=True, help="official .ckpt or golden .npz")
  parser.add_argument("--config", default=None, help="official YAML config (default: the .npz's meta)")
  parser.add_argument("--out", required=True, help="output directory (Orbax)")
  parser.add_argument("--step", type=int, default=0)
  args = parser.parse_args(argv)
  cli.existing_file(args.ckpt, "--ckpt")
  if args.config is not None:
    cli.existing_file(args.config, "--config")
  if args.step < 0:
    raise cli.UserError(f"--step={args.step}: expected an int >= 0")
  path = convert(args.ckpt, args.config, args.out, args.step)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
