r"""Checks our modules against golden outputs of the authors' code.

  python -m maskvq_jax.tools.check_golden ../shared/golden/official_small.npz [more.npz ...]

For each file: builds our model from the file's own config (`meta/config_json`), converts the torch
weights `sd/*`, runs the inputs `in/*` and prints one row per `out/*` key: max abs error, max error
relative to max|ref|, pass/fail. Index outputs must match exactly, floats within --rtol (1e-4).
Exit status 1 when any row fails or any `out/*` key is not covered by a checker; 2 (one `error:`
line, before anything runs) for a file that is missing, not an .npz, or holds none of the keys
a checker needs.
"""
import argparse
import json
import sys
from typing import Callable
import zipfile

import numpy as np

from maskvq_jax.core import cli
from maskvq_jax.parity.golden_rows import Row, compare

STAGE1_ROOTS = ("encoder.", "decoder.", "masker.", "demasker.", "quantize.", "quant_conv.", "post_quant_conv.")


def load(path: str) -> dict:
  """The arrays of a golden .npz; UserError for a missing, unreadable or non-.npz file."""
  try:
    z = np.load(path)
  except FileNotFoundError:
    raise cli.UserError(f"{path}: no such file") from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # text, truncated zip, ...
    raise cli.UserError(f"{path}: not an .npz archive (a golden file from the authors' code)"
                        ) from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise cli.UserError(f"{path}: a single .npy array, not a golden .npz file")
  try:
    with z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated archive
    raise cli.UserError(f"{path}: unreadable .npz ({cli.one_line(e)})") from None


def config_of(z: dict) -> dict:
  return json.loads(str(z["meta/config_json"]))


def _nchw(a):
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


def check_mqvae(z: dict, rtol: float) -> list[Row]:
  """Stage-1 forward (eval mode) and one EMA codebook update."""
  import flax
  import jax
  import jax.numpy as jnp
  from maskvq_jax.parity import convert_mqvae as convert
  from maskvq_jax.models import MQVAE
  from maskvq_jax.models import quantizer as quantizer_lib

  kwargs = convert.mqvae_kwargs_from_official(config_of(z)["vae_config"]["params"])
  model = MQVAE(**kwargs)
  sd = {k[3:]: v for k, v in z.items() if k.startswith("sd/") and k[3:].startswith(STAGE1_ROOTS)}
  variables = convert.convert_state_dict(sd, convert.abstract_variables(model), kwargs["scorer"])
  x = jnp.asarray(np.transpose(z["in/x"], (0, 2, 3, 1)))
  (rec, aux), state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(variables, x)
  # Sown values, flattened over submodules: {"scores": ..., "demasker_conv_in": ..., ...}.
  inter = {path[-1]: value[0] for path, value in
           flax.traverse_util.flatten_dict(jax.device_get(state["intermediates"]), is_leaf=lambda _, v: isinstance(v, tuple)).items()}
  ours = {
      "h": _nchw(inter["h"]), "scores": inter["scores"], "topk_idx": aux["positions"],
      "topk_scores": inter["kept_scores"], "remain_idx": inter["remain"], "quant_in": aux["quant_in"],
      "codes": aux["codes"], "quant": aux["quant"], "qloss": aux["qloss"], "mask": aux["mask"],
      "demasker_conv_in": _nchw(inter["demasker_conv_in"]), "demasker": _nchw(inter["demasker_out"]),
      "rec": _nchw(rec)}
  rows = []
  for name, value in ours.items():
    key = f"out/{name}"
    if key in z:
      rows.append(compare(key, np.asarray(value), z[key], rtol=rtol, exact=z[key].dtype.kind in "iu"))

  if "in/ema/x" in z:
    q = quantizer_lib.EMAVectorQuantizer(kwargs["codebook_size"], kwargs["codebook_dim"], beta=kwargs["beta"],
                                         decay=kwargs["ema_decay"], restart_unused_codes=kwargs["restart_unused_codes"])
    n = kwargs["codebook_size"]
    stats = {"codebook": z["in/ema/codebook_weight"][:n], "embed_ema": z["in/ema/embed_ema"],
             "cluster_size_ema": z["in/ema/cluster_size_ema"]}
    (x_q, loss, codes), new = q.apply({"vq_stats": stats}, jnp.asarray(z["in/ema/x"]), train=True,
                                      mutable=["vq_stats"], rngs={"vq_restart": jax.random.key(0)})
    new = jax.device_get(new["vq_stats"])
    codebook = np.concatenate([new["codebook"], z["in/ema/codebook_weight"][n:]], 0)  # padding row untouched
    for name, value in [("codes", codes), ("x_q", x_q), ("loss", loss), ("cluster_size_ema", new["cluster_size_ema"]),
                        ("embed_ema", new["embed_ema"]), ("codebook_weight", codebook)]:
      key = f"out/ema/{name}"
      rows.append(compare(key, np.asarray(value), z[key], rtol=rtol, exact=z[key].dtype.kind in "iu"))
  return rows


def check_stackformer_sections(z: dict, rtol: float) -> list[Row]:
  from maskvq_jax.parity import golden_stackformer
  rows = []
  for section in ("gpt", "gpt_class"):
    if any(k.startswith(f"out/{section}/") for k in z):
      rows += golden_stackformer.check_stackformer(z, section)
  return rows


def check_fid(z: dict, rtol: float) -> list[Row]:
  from maskvq_jax.parity import golden_fid as fid_golden
  from maskvq_jax.tools import fetch_weights
  return fid_golden.check_fid_inception(z, fetch_weights.inception_params())


# What each checker needs in a file (for the error on a file no checker applies to).
NEEDS = {"mqvae": "in/x + sd/encoder.conv_in.weight", "stackformer": "out/gpt/* or out/gpt_class/*",
         "fid_inception": "out/pool3"}
CHECKERS: list[tuple[str, Callable[[dict], bool], Callable[[dict, float], list[Row]]]] = [
    ("mqvae", lambda z: "in/x" in z and "sd/encoder.conv_in.weight" in z, check_mqvae),
    ("stackformer", lambda z: any(k.startswith(("out/gpt/", "out/gpt_class/")) for k in z), check_stackformer_sections),
    ("fid_inception", lambda z: "out/pool3" in z, check_fid),
]


def applicable(path: str, z: dict) -> list[str]:
  """Names of the checkers `z` has keys for; UserError naming the file and the keys otherwise."""
  names = [name for name, applies, _ in CHECKERS if applies(z)]
  if not names:
    shown = ", ".join(sorted(z)[:6]) + (", ..." if len(z) > 6 else "") if z else "none"
    raise cli.UserError(f"{path}: no golden keys to check; expected "
                        + "; or ".join(f"{v} ({k})" for k, v in NEEDS.items())
                        + f"; found {shown}")
  return names


def check_file(path: str, rtol: float = 1e-4, out=sys.stdout) -> tuple[list[Row], list[str]]:
  """Runs every applicable checker; returns (rows, out/* keys no checker covered)."""
  import jax
  z = load(path)
  applicable(path, z)
  rows = []
  for name, applies, fn in CHECKERS:
    if applies(z):
      try:
        # float32 matmuls/convs everywhere: GPUs default to TF32, which misses 1e-4.
        with jax.default_matmul_precision("highest"):
          rows += fn(z, rtol)
      except ImportError as e:  # a checker whose module is not available in this build
        print(f"  [{name}] not available: {e}", file=out)
  covered = {r.key for r in rows}
  skipped = sorted(k for k in z if k.startswith("out/") and k not in covered)
  return rows, skipped


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("files", nargs="+")
  parser.add_argument("--rtol", type=float, default=1e-4)
  args = parser.parse_args(argv)
  if not args.rtol > 0:
    raise cli.UserError(f"--rtol={args.rtol}: expected a float > 0")
  for path in args.files:  # every file is readable and checkable before any check runs
    applicable(path, load(path))
  ok = True
  for path in args.files:
    print(f"== {path}")
    rows, skipped = check_file(path, args.rtol)
    width = max([len(r.key) for r in rows] + [len(k) for k in skipped] + [10])
    print(f"  {'key':<{width}}  {'max_abs':>10}  {'max_rel':>10}  result")
    for r in rows:
      print(f"  {r.key:<{width}}  {r.max_abs:10.3g}  {r.max_rel:10.3g}  {'PASS' if r.passed else 'FAIL'}"
            + (f"  ({r.note})" if r.note else ""))
    for k in skipped:
      print(f"  {k:<{width}}  {'-':>10}  {'-':>10}  SKIPPED (no checker)")
    n_fail = sum(not r.passed for r in rows)
    print(f"  {len(rows) - n_fail} passed, {n_fail} failed, {len(skipped)} skipped")
    ok &= n_fail == 0 and not skipped
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
