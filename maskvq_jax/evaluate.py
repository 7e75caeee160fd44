r"""Evaluation CLI: FID / IS / precision-recall of samples, rFID / PSNR / SSIM / LPIPS / codebook
usage / mask analysis of a tokenizer; writes a JSON report and prints a table.

  # stage 1 (a trainer workdir, a tokenizer_io directory, or <workdir>/tokenizer/):
  python -m maskvq_jax.evaluate --workdir /ckpt/keep_0.3 \
      --metrics rfid,psnr,ssim,lpips,usage,mask [--split validation --num_examples 50000]
  # stage 2 (a Stackformer workdir): sample, then score against the dataset split
  python -m maskvq_jax.evaluate --workdir /ckpt/keep_0.3/stage2 --metrics fid,pr \
      --num_samples 50000 --top_k 100 --top_p 0.95
  # any samples (a folder of images, read recursively in natural path order; the sampling CLI's
  # --out folder of .npz shards, in sample-index order; or one .npz with uint8 "images"
  # [N, H, W, 3]); --num_samples N scores only the first N:
  python -m maskvq_jax.evaluate --samples samples.npz --dataset image_folder/ffhq \
      --split validation --res 256 --metrics fid,pr --output report.json
  # precompute (and cache) a split's reference statistics, e.g. before a sweep:
  python -m maskvq_jax.evaluate --reference_only --dataset imagenet2012 --split validation \
      --res 256
  # against published statistics (standard mu/sigma .npz):
  python -m maskvq_jax.evaluate --samples samples/ --ref_stats fid_stats_imagenet256.npz \
      --metrics fid --output report.json

Why this shape: each metric family needs one sharded pass (`evaluation/features.py`): the
tokenizer pass reconstructs the split once and yields everything stage-1 metrics need; the
sample pass embeds the samples once for FID, IS and precision/recall; reference statistics of
the real split are cached (`evaluation/reference.py`). Every example counts exactly once on any
number of devices and hosts. IS needs `--inception_logits_npz` (see evaluation/inception_score.py)
and fails before any work is done without it.

Report: `--output`, default `<workdir>/evaluation/report.json` (format: evaluation/report.py).
Multi-host: run the same command on every host with `--multihost` (or the explicit
`--coordinator_address --num_processes --process_id`, `core/distributed.py`); process 0 writes.
"""
import argparse
import sys
import time
from typing import Optional

import jax
import numpy as np

from maskvq_jax.stage2 import sampling
from maskvq_jax.core import cli
from maskvq_jax.data import runs as checkpoints
from maskvq_jax.evaluation import codebook
from maskvq_jax.evaluation import data
from maskvq_jax.evaluation import features
from maskvq_jax.core import distributed
from maskvq_jax.core import files
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.evaluation import fid
from maskvq_jax.evaluation import generate
from maskvq_jax.evaluation import inception_score
from maskvq_jax.evaluation import mask_analysis
from maskvq_jax.evaluation import prec_recall
from maskvq_jax.evaluation import recon
from maskvq_jax.evaluation import reference
from maskvq_jax.evaluation import report as report_lib
from maskvq_jax.core.progress import Progress
from maskvq_jax.tools import fetch_weights

SAMPLE_METRICS = ("fid", "is", "pr")
TOKENIZER_METRICS = ("rfid", "psnr", "ssim", "lpips", "usage", "mask")
ALL_METRICS = SAMPLE_METRICS + TOKENIZER_METRICS
DEFAULT_NUM_SAMPLES = 50_000
COVERAGE_KEYS = ("kept_on_object", "chance", "kept_on_object_tokens", "chance_tokens")


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="python -m maskvq_jax.evaluate",
                         description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  what = p.add_argument_group("what to evaluate")
  what.add_argument("--workdir", help="stage-1/stage-2 workdir or tokenizer directory")
  what.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  what.add_argument("--samples", help="folder of images or .npz of uint8 [N, H, W, 3] samples")
  what.add_argument("--metrics", default="rfid,psnr,ssim,usage,mask",
                    help=f"comma list of {','.join(ALL_METRICS)} (default: %(default)s)")
  ds = p.add_argument_group("dataset (defaults: the workdir's training config)")
  ds.add_argument("--dataset", help="TFDS name, shapes/<cfg> or image_folder/<cfg>")
  ds.add_argument("--source", choices=("tfds", "procedural"), default=None)
  ds.add_argument("--split", default=None)
  ds.add_argument("--res", type=int, default=None, help="centre-crop resolution of real images")
  ds.add_argument("--num_examples", type=int, default=None, help="-1: whole split")
  ds.add_argument("--data_dir", default=None)
  ds.add_argument("--folder", default=None, help="image folder for image_folder/* datasets")
  ds.add_argument("--data_seed", type=int, default=None, help="procedural datasets only")
  fid_g = p.add_argument_group("FID / IS / precision-recall")
  fid_g.add_argument("--ref_stats", help="reference mu/sigma .npz (e.g. published); FID only")
  fid_g.add_argument("--stats_cache", default=None,
                     help="cache dir for reference stats (default $MASKVQ_CACHE or "
                          "~/.cache/maskvq_jax)")
  fid_g.add_argument("--refresh_stats", action="store_true", help="recompute cached statistics")
  fid_g.add_argument("--reference_only", action="store_true",
                     help="only compute (and cache) the --dataset split's reference statistics "
                          "and features, print the .npz path, and exit")
  fid_g.add_argument("--inception_logits_npz", default=None,
                     help="Inception logits head (kernel [2048, 1008], bias) needed for IS")
  fid_g.add_argument("--is_splits", type=int, default=10)
  fid_g.add_argument("--is_bias", action="store_true",
                     help="add the logits bias (the original IS code omits it; default off)")
  fid_g.add_argument("--pr_k", type=int, default=3, help="k of the k-NN manifolds")
  smp = p.add_argument_group("stage-2 sampling")
  smp.add_argument("--num_samples", type=int, default=None,
                   help=f"images to draw from a stage-2 workdir (default {DEFAULT_NUM_SAMPLES}); "
                        "with --samples: score only the first N (default: all)")
  smp.add_argument("--sample_batch_size", type=int, default=0,
                   help="0: 16 x devices; padded up to a multiple of the devices")
  smp.add_argument("--seed", type=int, default=0)
  smp.add_argument("--temperature", type=float, default=1.0)
  smp.add_argument("--top_k", type=int, default=None)
  smp.add_argument("--top_p", type=float, default=None)
  smp.add_argument("--position_temperature", type=float, default=None,
                   help="default: --temperature (the authors use one temperature for both)")
  smp.add_argument("--position_top_k", type=int, default=None)
  smp.add_argument("--position_top_p", type=float, default=None)
  smp.add_argument("--guidance_scale", type=float, default=None)
  smp.add_argument("--sample_weight_dtype", default=None,
                   help="e.g. bfloat16: decode-time matmul weights (see sampling.SamplerConfig)")
  smp.add_argument("--save_samples", default=None, help="write the drawn samples to this .npz")
  out = p.add_argument_group("run and output")
  out.add_argument("--batch_size", type=int, default=0,
                   help="global evaluation batch (0: 32 x devices, capped by the set size)")
  out.add_argument("--output", default=None, help="report path (default <workdir>/evaluation/"
                                                  "report.json)")
  out.add_argument("--figures_dir", default=None, help="mask figures (default: next to report)")
  out.add_argument("--num_figures", type=int, default=8)
  distributed.add_flags(p)
  return p.parse_args(argv)


def parse_metrics(text: str) -> list[str]:
  names = [m.strip().lower() for m in text.split(",") if m.strip()]
  bad = [m for m in names if m not in ALL_METRICS]
  if bad or not names:
    raise cli.UserError(f"--metrics: unknown {bad or text!r}; choose from {','.join(ALL_METRICS)}")
  return list(dict.fromkeys(names))


def _batch(args, n: int) -> int:
  """Global batch: --batch_size, else 32 per device, shrunk (in whole device rows) for small n;
  padded up to a multiple of the devices and hosts (the padding rows are dropped)."""
  d = jax.device_count()
  if args.batch_size:
    return sharding_lib.padded_size("--batch_size", args.batch_size, d, note=True)
  return min(32 * d, sharding_lib.padded_size("examples", max(1, n), d))


def _dataset_spec(args, loc, res_default: Optional[int]):
  """DatasetSpec from flags, falling back to the workdir's config; None if no dataset named."""
  cfg = (checkpoints.dataset_defaults(loc) if loc is not None else None) or {}
  if args.dataset and args.dataset != cfg.get("name"):
    cfg = {}  # another dataset than the run's: none of its config applies
  name = args.dataset or cfg.get("name")
  if not name:
    return None
  source = args.source or cfg.get("source") or (
      "procedural" if name.startswith("shapes") and not args.data_dir else "tfds")
  n = args.num_examples
  if n is None:
    n = int(cfg.get("num_examples", -1)) if source == "procedural" else -1
  pick = lambda flag, key, default: flag if flag is not None else cfg.get(key) or default
  return data.DatasetSpec(
      name=name, split=pick(args.split, "split", "validation"), source=source,
      res=int(pick(args.res, "res", res_default or 256)), num_examples=int(n),
      data_dir=pick(args.data_dir, "data_dir", ""), folder=pick(args.folder, "folder", ""),
      data_seed=int(pick(args.data_seed, "data_seed", 0)))


def _inception():
  return fetch_weights.inception_params()


# ----- passes ------------------------------------------------------------------------------------
def tokenizer_pass(args, metrics, model, variables, spec, report, figures_dir):
  """Reconstructs the split once; fills stage-1 metrics into `report`. Returns pool3 of reals."""
  want = {m for m in metrics if m in TOKENIZER_METRICS}
  if spec.res != model.resolution:
    raise cli.UserError(f"dataset res={spec.res} != tokenizer resolution={model.resolution}; "
                        f"pass --res {model.resolution}")
  params = {"tokenizer": variables}
  lpips_module = None
  if "rfid" in want:
    params["inception"] = _inception()
  if "lpips" in want:
    from maskvq_jax.models import lpips as lpips_lib  # pylint: disable=import-outside-toplevel  # lazy
    lpips_module = lpips_lib.LPIPS("vgg16")
    params["lpips"] = lpips_module.load_params()
  with cli.user_input():  # the dataset the flags (or the run's config) name
    src, n = data.dataset_source(spec)
  runner = features.BatchRunner(recon.make_recon_fn(model, want, lpips_module), params,
                                global_batch_size=_batch(args, n))
  shard = data.host_shard(src, n, runner.local_batch_size, res=spec.res, keep_mask=True)
  prog = Progress(f"tokenizer {spec.name}:{spec.split}", shard.num_local)
  out = runner.run(shard.batches(), num_local=shard.num_local, index_offset=shard.start,
                   progress=prog)
  report["timings"]["tokenizer_pass_s"] = prog.seconds
  report["num_examples"]["reconstruction"] = int(len(out["index"]))
  m = report["metrics"]
  if "rfid" in want:
    m["rfid"] = fid.fid_from_features(out["pool3_real"], out["pool3_rec"])
    stats_path, _ = reference.cache_paths(spec, args.stats_cache)
    if not files.isfile(stats_path):  # by-product: the split's reference statistics
      reference.store(spec, out["pool3_real"], args.stats_cache)
  for k in ("psnr", "ssim", "lpips"):
    if k in want:
      m[k] = float(np.mean(out[k].astype(np.float64)))
  if "usage" in want:
    u = codebook.codebook_usage(out["codes"], model.codebook_size)
    m.update({f"codebook/{k}": v for k, v in u.items() if k != "codebook_size"})
  if "mask" in want:
    if model.dense:
      report["notes"].append("mask: dense tokenizer keeps every token; no mask analysis")
    else:
      m["mask/kept_fraction"] = mask_analysis.kept_fraction(out["mask"])
      if "kept_on_object" in out:
        s = mask_analysis.summarize({k: out[k] for k in COVERAGE_KEYS})
        m.update({f"mask/{k}": v for k, v in s.items()})
      else:
        report["notes"].append(f"mask: {spec.name} has no object masks; only figures and "
                               "kept_fraction")
      if jax.process_index() == 0 and args.num_figures > 0:
        k = min(args.num_figures, len(out["index"]))
        first = [data.preprocess_example(src[i], spec.res)["image"] for i in out["index"][:k]]
        report["files"]["mask_figures"] = mask_analysis.save_figures(
            np.stack(first), out["scores"][:k], out["mask"][:k], figures_dir,
            max_examples=k)["grid"]
  return out.get("pool3_real")


def sample_pass(args, metrics, images_source, n, spec, report, real_pool3=None):
  """Embeds the samples once; fills fid / is / precision / recall into `report`."""
  inc = _inception()
  t0 = time.perf_counter()
  pool3 = reference.compute_pool3(images_source, n, inc, global_batch_size=_batch(args, n),
                                  res=None, name="samples")
  report["timings"]["sample_features_s"] = time.perf_counter() - t0
  report["num_examples"]["samples"] = int(n)
  m = report["metrics"]
  ref = None
  need_real = "pr" in metrics or ("fid" in metrics and not args.ref_stats)
  if need_real:
    if real_pool3 is not None and spec is not None:
      ref = {"pool3": real_pool3, "path": None, "cached": False,
             "num_examples": int(real_pool3.shape[0])}
      ref["mu"] = ref["sigma"] = None  # FID takes the features route
    elif spec is None:
      raise cli.UserError("fid/pr need real images: pass --dataset (or a workdir whose config "
                          "names one), or --ref_stats for FID only")
    else:
      t0 = time.perf_counter()
      ref = reference.reference(spec, inc, need_features="pr" in metrics,
                                global_batch_size=lambda count: _batch(args, count),
                                cache_dir=args.stats_cache, refresh=args.refresh_stats)
      report["timings"]["reference_s"] = time.perf_counter() - t0
    report["num_examples"]["reference"] = ref["num_examples"]
    report["files"]["reference_stats"] = ref["path"]
  if "fid" in metrics:
    if args.ref_stats:
      with cli.user_input():
        mu, sigma = fid.load_statistics(args.ref_stats)
      report["files"]["reference_stats"] = files.absolute(args.ref_stats)
    elif ref["pool3"] is not None:
      mu = sigma = None
    else:
      mu, sigma = ref["mu"], ref["sigma"]
    m["fid"] = (fid.fid_from_features(ref["pool3"], pool3) if mu is None
                else fid.frechet_distance(*fid.statistics(pool3), mu, sigma))
  if "is" in metrics:
    head = inception_score.load_head(args.inception_logits_npz, pool3.shape[1])
    m["is"], m["is_std"] = inception_score.inception_score_from_pool3(
        pool3, head, splits=min(args.is_splits, n), use_bias=args.is_bias)
  if "pr" in metrics:
    m.update(prec_recall.precision_recall(ref["pool3"], pool3, k=args.pr_k))


# ----- driver ------------------------------------------------------------------------------------
def reference_only(args) -> str:
  """Computes/caches the reference statistics of the --dataset split; returns the .npz path."""
  distributed.initialize_from_args(args)
  spec = _dataset_spec(args, None, None)
  if spec is None:
    raise cli.UserError("--reference_only needs --dataset (and --split, --res)")
  ref = reference.reference(spec, _inception(), need_features=True,
                            global_batch_size=lambda count: _batch(args, count),
                            cache_dir=args.stats_cache, refresh=args.refresh_stats)
  if jax.process_index() == 0:
    print(f"reference statistics ({ref['num_examples']} images, "
          f"{'cached' if ref['cached'] else 'computed'}): {ref['path']}")
  return ref["path"]


def run(args) -> dict:
  """Runs the evaluation described by parsed `args`; returns the report (also written)."""
  if args.reference_only:
    return {"files": {"reference_stats": reference_only(args)}}
  metrics = parse_metrics(args.metrics)
  if "is" in metrics:  # fail before any expensive work
    with cli.user_input():
      inception_score.load_head(inception_score.require_head(args.inception_logits_npz))
  if not args.workdir and not args.samples:
    raise cli.UserError("give --workdir (tokenizer / stage-1 / stage-2) and/or --samples")
  if not args.output and not args.workdir:
    raise cli.UserError("--output is required when there is no --workdir")
  if args.ref_stats:
    cli.existing_file(args.ref_stats, "--ref_stats")
  if args.ref_stats and "pr" in metrics and not args.dataset:
    raise cli.UserError("pr needs real features, which published mu/sigma files do not hold: "
                     "also pass --dataset")
  with cli.user_input(ValueError):
    distributed.initialize_from_args(args)
  samples = None
  if args.samples and any(m in SAMPLE_METRICS for m in metrics):  # refuse bad samples up front
    with cli.user_input():
      samples = data.samples_source(args.samples, num=args.num_samples)

  with cli.user_input():  # the workdir the user named
    loc = checkpoints.describe(args.workdir, args.step) if args.workdir else None
  target = {"kind": "samples" if loc is None else loc.kind,
            "path": files.absolute(args.workdir or args.samples),
            "step": None if loc is None else loc.step, "samples": args.samples}
  rep = report_lib.new_report(target)
  rep["settings"] = {k: v for k, v in vars(args).items()
                     if k not in ("multihost", "coordinator_address", "num_processes", "process_id")}
  rep["settings"]["devices"], rep["settings"]["processes"] = jax.device_count(), jax.process_count()
  out_path = files.absolute(
      args.output or files.join(files.absolute(args.workdir), "evaluation", "report.json"))
  figures_dir = files.absolute(args.figures_dir or files.join(files.parent(out_path), "figures"))
  tok_model = tok_vars = None
  if loc is not None:
    with cli.user_input():
      tok_model, tok_vars, tok_info = checkpoints.load_tokenizer(args.workdir, args.step)
    rep["tokenizer"] = tok_info
  spec = _dataset_spec(args, loc, tok_model.resolution if tok_model is not None else None)
  rep["dataset"] = None if spec is None else dict(vars(spec))
  if spec is None and ("pr" in metrics or ("fid" in metrics and not args.ref_stats)):
    raise cli.UserError("fid/pr need real images: pass --dataset (or a workdir whose config names "
                        "one), or --ref_stats for FID only")

  real_pool3 = None
  if any(m in TOKENIZER_METRICS for m in metrics):
    if tok_model is None:
      raise cli.UserError(f"{[m for m in metrics if m in TOKENIZER_METRICS]} evaluate a tokenizer: "
                       "pass --workdir (a tokenizer / stage-1 / stage-2 directory)")
    if spec is None:
      raise cli.UserError("tokenizer metrics need a dataset: pass --dataset (and --split)")
    real_pool3 = tokenizer_pass(args, metrics, tok_model, tok_vars, spec, rep, figures_dir)

  if any(m in SAMPLE_METRICS for m in metrics):
    if samples is not None:
      src, n = samples
    elif loc is not None and loc.kind == "stage2":
      with cli.user_input():
        sf_model, sf_vars, sf_info = checkpoints.load_stage2(args.workdir, args.step)
      rep["stage2"] = sf_info
      cfg = sampling.SamplerConfig(
          steps=tok_model.num_tokens, temperature=args.temperature, top_k=args.top_k,
          top_p=args.top_p, position_temperature=args.position_temperature,
          position_top_k=args.position_top_k, position_top_p=args.position_top_p,
          guidance_scale=args.guidance_scale, weight_dtype=args.sample_weight_dtype)
      bs = (sharding_lib.padded_size("--sample_batch_size", args.sample_batch_size,
                                     jax.device_count(), note=True)
            if args.sample_batch_size else 16 * jax.device_count())
      num = DEFAULT_NUM_SAMPLES if args.num_samples is None else args.num_samples
      if num < 1:
        raise ValueError(f"--num_samples={num} must be >= 1")
      images, timing = generate.sample_images(
          sf_model, sf_vars, tok_model, tok_vars, cfg, num_images=num,
          batch_size=bs, seed=args.seed, progress=Progress("sampling", num))
      rep["metrics"]["sampling/tokens_per_s"] = timing["tokens_per_s"]
      rep["metrics"]["sampling/images_per_s"] = timing["images_per_s"]
      rep["timings"].update(timing)
      if args.save_samples and jax.process_index() == 0:
        rep["files"]["samples"] = files.save_npz(args.save_samples, images=images)
      src, n = data.array_source(images)
    else:
      raise cli.UserError(f"{[m for m in metrics if m in SAMPLE_METRICS]} score generated images: "
                       "pass --samples, or a stage-2 workdir (for the tokenizer itself use rfid)")
    # real_pool3 (when rfid ran) embeds exactly the split `spec` names: reused as reference.
    sample_pass(args, metrics, src, n, spec, rep, real_pool3=real_pool3)

  rep["files"]["report"] = out_path
  if jax.process_index() == 0:
    report_lib.write(out_path, rep)
    print(report_lib.table(rep))
    print(f"report: {out_path}")
  return rep


@cli.entry_point
def main(argv=None) -> int:
  args = parse_args(argv)
  run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
