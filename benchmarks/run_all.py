r"""Runs every CPU benchmark and regenerates the measured tables of BENCHMARKS.md.

  python benchmarks/run_all.py              # runs bench_mqvae.py and bench_sampling.py, rewrites the tables
  python benchmarks/run_all.py --dry_run    # prints the tables without touching BENCHMARKS.md
  python benchmarks/run_all.py --authors_repo /path/to/MaskedVectorQuantization \
      --authors_python /path/to/torch/venv/bin/python   # also times the authors' code in the same run

With --authors_repo, the authors' PyTorch MQ-VAE modules (bench_authors_torch.py) and their
Stackformer sampling loop (bench_authors_sampling.py) are timed in the same run, and the sampling
ratio is taken against their measured tokens/s; without it, against the quoted figure
(AUTHORS["sampling_tokens_per_s"], labelled as quoted).

Only the block between `<!-- run_all:begin -->` and `<!-- run_all:end -->` is rewritten; the rest of
BENCHMARKS.md (GPU results, profiling notes, the change log) is kept as written. Each benchmark runs
in its own process with the current interpreter; none imports TensorFlow.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
# Quoted figures of the authors' code on the same 2-core CPU (not measured by this script).
AUTHORS = {"train_fwd_bwd": 12.3, "recon": 44.2, "sampling_tokens_per_s": 220.0}
SAMPLING_TARGET = 20.0  # Our masked sampler's tokens/s over the authors' (median), issue target.


def run_bench(script: str, *extra: str, python: str = sys.executable) -> dict:
  out = subprocess.run([python, os.path.join(ROOT, "benchmarks", script), *extra], check=True,
                       capture_output=True, text=True, cwd=ROOT)
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if not lines:
    raise RuntimeError(f"{script} printed no JSON line:\n{out.stdout}\n{out.stderr}")
  return json.loads(lines[-1])


def machine() -> str:
  cpu = platform.processor() or "cpu"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import jax  # pylint: disable=import-outside-toplevel
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()}; jax {jax.__version__} "
          f"({jax.default_backend()}); load average {os.getloadavg()[0]:.1f}")


def authors_rows(mq: dict, authors: dict) -> list:
  """Side-by-side rows: the authors' PyTorch modules timed in the same run, same load."""
  if not authors:
    return []
  return [
      "", "Same run, same load, the authors' PyTorch modules (`bench_authors_torch.py`, "
      f"torch {authors['torch']}, {authors['threads']} threads):", "",
      "| metric | ours (img/s) | authors now (img/s) | ours / authors |", "|---|---|---|---|",
      f"| (a) fwd + bwd | {mq['train_fwd_bwd']} | {authors['authors_train_fwd_bwd']} | "
      f"{mq['train_fwd_bwd'] / authors['authors_train_fwd_bwd']:.1f}x |",
      f"| (c) reconstruction | {mq['recon']} | {authors['authors_recon']} | "
      f"{mq['recon'] / authors['authors_recon']:.1f}x |"]


def sampling_reference(authors_sampling: dict) -> dict:
  """The authors' sampling tokens/s the ratio is taken against: measured in this run when
  bench_authors_sampling.py ran, else the quoted figure; `label` names which for the table."""
  if authors_sampling:
    tps = float(authors_sampling["tokens_per_s"])
    if not tps > 0:
      raise ValueError(f"authors' measured sampling tokens/s must be > 0, got {authors_sampling['tokens_per_s']!r}")
    return {"tokens_per_s": tps, "source": "measured",
            "label": f"authors' {tps:g} tokens/s (measured, same run)"}
  tps = AUTHORS["sampling_tokens_per_s"]
  return {"tokens_per_s": tps, "source": "quoted", "label": f"authors' {tps:g} tokens/s (quoted)"}


def sampling_rows(sm: dict, ref: dict) -> list:
  """Rows of the sampling table; the ratio column is ours over `ref` (see sampling_reference)."""
  m, d, m16 = sm["masked"], sm["dense"], sm["masked_bf16_weights"]
  ratio = lambda tps: f"{tps / ref['tokens_per_s']:.1f}x"
  return [
      f"| model | steps | tokens/s | images/s | vs {ref['label']} |",
      "|---|---|---|---|---|",
      f"| Stackformer {m['layers']}, KV cache, f32 | {m['steps']} | {m['tokens_per_s']} | {m['images_per_s']} | "
      f"{ratio(m['tokens_per_s'])} (target >= {SAMPLING_TARGET:g}x) |",
      f"| Stackformer, bf16 weights | {m['steps']} | {m16['tokens_per_s']} | {m16['images_per_s']} | "
      f"{ratio(m16['tokens_per_s'])} |",
      f"| dense raster GPT {d['layers']} layers, f32 | {d['steps']} | {d['tokens_per_s']} | {d['images_per_s']} | - |",
      f"| masked / dense images per second | | | {sm['masked_over_dense_images_per_s']}x | target >= 3x |",
  ]


def sampling_summary(sm: dict, ref: dict) -> dict:
  """The JSON record of the sampling comparison: which authors' figure, and our ratios to it."""
  return {"authors_sampling_tokens_per_s": ref["tokens_per_s"], "authors_sampling_source": ref["source"],
          "sampling_vs_authors": round(sm["masked"]["tokens_per_s"] / ref["tokens_per_s"], 2),
          "sampling_bf16_weights_vs_authors":
              round(sm["masked_bf16_weights"]["tokens_per_s"] / ref["tokens_per_s"], 2),
          "sampling_target": SAMPLING_TARGET}


def tables(mq: dict, sm: dict, when: str, where: str, authors: dict, authors_sampling: dict = None) -> str:
  ratio = lambda v, ref: f"{v / ref:.2f}x"
  rows = [
      "| metric | ours (img/s) | authors (img/s) | ratio | target |",
      "|---|---|---|---|---|",
      f"| (a) fwd + bwd, L1 + quantizer loss, training mode | {mq['train_fwd_bwd']} | {AUTHORS['train_fwd_bwd']} | "
      f"{ratio(mq['train_fwd_bwd'], AUTHORS['train_fwd_bwd'])} | >= 3x |",
      f"| (b) full GAN step with LPIPS | {mq['gan_step']} | - | - | - |",
      f"| (c) inference reconstruction | {mq['recon']} | {AUTHORS['recon']} | {ratio(mq['recon'], AUTHORS['recon'])} | - |",
      f"| (d) (a) without mask/de-mask (dense) | {mq['dense_fwd_bwd']} | - | - | - |",
      f"| cost of masking (d)/(a) time = (a)/(d) speed | {mq['dense_fwd_bwd'] / mq['train_fwd_bwd']:.2f} "
      f"(masked is {mq['train_fwd_bwd'] / mq['dense_fwd_bwd']:.2f}x the dense speed) | | | masked time <= 1.5x dense |",
  ] + authors_rows(mq, authors)
  if authors_sampling:
    ours = (sm["batch"], sm["masked"]["steps"])
    theirs = (authors_sampling["batch"], authors_sampling["steps"])
    if ours != theirs:
      raise ValueError(f"the authors' sampler ran at (batch, steps) {theirs}, ours at {ours}: not comparable")
  ref = sampling_reference(authors_sampling or {})
  srows = sampling_rows(sm, ref)
  if authors_sampling:
    srows += ["", "The authors' figure is their own sampling loop (`ReverseStackformer.sample`, un-cached, "
              f"top-k 100 / top-p 0.95, positions top-k 10 / top-p 0.95) on their `ReverseStackedPositionGPT` "
              f"at this config, timed in this run by `bench_authors_sampling.py` (torch {authors_sampling['torch']}, "
              f"threads {authors_sampling['threads']}, median of {authors_sampling['runs']} runs)."]
  return "\n".join([
      BEGIN, f"Measured {when} on {where} by `python benchmarks/run_all.py`.", "",
      "### MQ-VAE (bench config: 64 px, ch 64, 1-1-2, 16x16 grid, keep 0.25, batch 8)", "", *rows, "",
      "### Sampling (bench config: d 256, 8 heads, 4+4 layers, K = 64, batch 8; dense: 8 layers, 256 steps)", "",
      *srows, "", "Raw JSON:", "```", json.dumps(mq, sort_keys=True), json.dumps(sm, sort_keys=True),
      *([json.dumps(authors, sort_keys=True)] if authors else []),
      *([json.dumps(authors_sampling, sort_keys=True)] if authors_sampling else []),
      json.dumps(sampling_summary(sm, ref), sort_keys=True), "```", END])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dry_run", action="store_true")
  ap.add_argument("--path", default=os.path.join(ROOT, "BENCHMARKS.md"))
  ap.add_argument("--authors_repo", default="", help="checkout of the authors' repo: time it side by side")
  ap.add_argument("--authors_python", default="python3", help="an interpreter with torch + einops")
  args = ap.parse_args(argv)
  where = machine()
  authors, authors_sampling = {}, {}
  if args.authors_repo:
    authors = run_bench("bench_authors_torch.py", "--authors_repo", args.authors_repo, python=args.authors_python)
    authors_sampling = run_bench("bench_authors_sampling.py", "--authors_repo", args.authors_repo,
                                 python=args.authors_python)
  mq = run_bench("bench_mqvae.py")
  sm = run_bench("bench_sampling.py")
  block = tables(mq, sm, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), where, authors, authors_sampling)
  if args.dry_run:
    print(block)
    return 0
  text = open(args.path).read() if os.path.exists(args.path) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
  if BEGIN not in text or END not in text:
    raise SystemExit(f"{args.path} lacks the {BEGIN} / {END} markers; refusing to rewrite it")
  head, rest = text.split(BEGIN, 1)
  tail = rest.split(END, 1)[1]
  tmp = args.path + ".tmp"
  with open(tmp, "w") as f:
    f.write(head + block + tail)
  os.replace(tmp, args.path)
  print(block)
  return 0


if __name__ == "__main__":
  sys.exit(main())
