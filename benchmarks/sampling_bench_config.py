"""The sampling bench config, one definition for our sampler (bench_sampling.py) and the authors'
(bench_authors_sampling.py), so the side-by-side ratio in run_all.py compares the same model.
Standard library only: the authors' script runs in a torch interpreter without jax."""
import argparse


def add_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--steps", type=int, default=64)  # K kept tokens of a 16x16 grid (25 %).
  ap.add_argument("--grid_tokens", type=int, default=256)
  ap.add_argument("--codebook", type=int, default=1024)
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--layers", type=int, default=4)  # Per transformer (code, position); dense: 2x.
  return ap
