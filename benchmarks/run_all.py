r"""Runs every CPU benchmark and regenerates the measured tables of BENCHMARKS.md.

  python benchmarks/run_all.py              # runs bench_mqvae.py and bench_sampling.py, rewrites the tables
  python benchmarks/run_all.py --dry_run    # prints the tables without touching BENCHMARKS.md

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
AUTHORS = {"train_fwd_bwd": 12.3, "recon": 44.2, "sampling_tokens_per_s": 220.0}  # same 2-core CPU


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


def tables(mq: dict, sm: dict, when: str, where: str, authors: dict) -> str:
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
  m, d = sm["masked"], sm["dense"]
  srows = [
      "| model | steps | tokens/s | images/s | vs authors' 220 tokens/s |",
      "|---|---|---|---|---|",
      f"| Stackformer {m['layers']}, KV cache, f32 | {m['steps']} | {m['tokens_per_s']} | {m['images_per_s']} | "
      f"{m['tokens_per_s'] / AUTHORS['sampling_tokens_per_s']:.1f}x (target >= 20x) |",
      f"| Stackformer, bf16 weights | {m['steps']} | {sm['masked_bf16_weights']['tokens_per_s']} | "
      f"{sm['masked_bf16_weights']['images_per_s']} | "
      f"{sm['masked_bf16_weights']['tokens_per_s'] / AUTHORS['sampling_tokens_per_s']:.1f}x |",
      f"| dense raster GPT {d['layers']} layers, f32 | {d['steps']} | {d['tokens_per_s']} | {d['images_per_s']} | - |",
      f"| masked / dense images per second | | | {sm['masked_over_dense_images_per_s']}x | target >= 3x |",
  ]
  return "\n".join([
      BEGIN, f"Measured {when} on {where} by `python benchmarks/run_all.py`.", "",
      "### MQ-VAE (bench config: 64 px, ch 64, 1-1-2, 16x16 grid, keep 0.25, batch 8)", "", *rows, "",
      "### Sampling (bench config: d 256, 8 heads, 4+4 layers, K = 64, batch 8; dense: 8 layers, 256 steps)", "",
      *srows, "", "Raw JSON:", "```", json.dumps(mq, sort_keys=True), json.dumps(sm, sort_keys=True),
      *([json.dumps(authors, sort_keys=True)] if authors else []), "```", END])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dry_run", action="store_true")
  ap.add_argument("--path", default=os.path.join(ROOT, "BENCHMARKS.md"))
  ap.add_argument("--authors_repo", default="", help="checkout of the authors' repo: time it side by side")
  ap.add_argument("--authors_python", default="python3", help="an interpreter with torch + einops")
  args = ap.parse_args(argv)
  where = machine()
  authors = {}
  if args.authors_repo:
    authors = run_bench("bench_authors_torch.py", "--authors_repo", args.authors_repo, python=args.authors_python)
  mq = run_bench("bench_mqvae.py")
  sm = run_bench("bench_sampling.py")
  block = tables(mq, sm, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), where, authors)
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
