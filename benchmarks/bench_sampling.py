r"""Sampling throughput: KV-cached Stackformer vs the dense raster GPT baseline.

Prints ONE JSON line. Tokens/s = batch * steps / seconds (median over runs, after compile);
images/s = batch / seconds. The authors' un-cached sampler managed about 220 tokens/s.
"masked" / "dense" decode with f32 weights (the parity setting); "*_bf16_weights" store the matmul
kernels in bf16 (SamplerConfig(weight_dtype="bfloat16")), which halves the bytes read per step.

  .venv/bin/python benchmarks/bench_sampling.py            # bench config, random init
  .venv/bin/python benchmarks/bench_sampling.py --runs 3 --steps 64

Imports no TensorFlow.
"""
import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from maskvq_jax.stage2 import sampling
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer
import sampling_bench_config  # benchmarks/ (the script's directory) is on sys.path


def _time(fn, runs):
  """Median and min seconds of `runs` calls after one compile + warm-up call."""
  jax.block_until_ready(fn(0))
  times = []
  for i in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(i + 1))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times)


def masked_setup(*, grid_tokens=256, codebook=1024, d_model=256, heads=8, layers=4, steps=64):
  """(model, params, SamplerConfig) of the bench config's Stackformer (random init); also what
  benchmarks/profile_cpu.py traces."""
  n = grid_tokens
  model = Stackformer(vocab_size=codebook + 1, position_size=n + 1, block_size=n, d_model=d_model,
                      n_heads=heads, code_layers=layers, position_layers=layers)
  tok = jnp.zeros((1, 2), jnp.int32)
  cfg = sampling.SamplerConfig(steps=steps, top_k=100, top_p=0.95, position_top_k=10,
                               position_top_p=0.95)
  return model, model.init(jax.random.key(0), tok, tok, tok), cfg


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--runs", type=int, default=15)  # Medians: the shared host is noisy.
  sampling_bench_config.add_args(ap)
  args = ap.parse_args()

  n, b = args.grid_tokens, args.batch
  masked, masked_params, masked_cfg = masked_setup(
      grid_tokens=n, codebook=args.codebook, d_model=args.d_model, heads=args.heads,
      layers=args.layers, steps=args.steps)
  dense = DenseGPT(vocab_size=args.codebook + 1, block_size=n, d_model=args.d_model,
                   n_heads=args.heads, n_layers=2 * args.layers)
  tok = jnp.zeros((1, 2), jnp.int32)
  dense_params = dense.init(jax.random.key(1), tok)
  dense_cfg = sampling.SamplerConfig(steps=n, top_k=100, top_p=0.95)

  key = jax.random.key(2)

  def run_masked(cfg):
    return lambda i: sampling.sample(masked, masked_params, jax.random.fold_in(key, i), cfg,
                                     batch_size=b).codes

  def run_dense(cfg):
    return lambda i: sampling.sample_dense(dense, dense_params, jax.random.fold_in(key, i), cfg,
                                           batch_size=b).codes

  def entry(times, steps):
    seconds, fastest = times
    return {"seconds": round(seconds, 4), "tokens_per_s": round(b * steps / seconds, 1),
            "images_per_s": round(b / seconds, 2),
            "tokens_per_s_best_run": round(b * steps / fastest, 1)}

  bf16 = lambda cfg: dataclasses.replace(cfg, weight_dtype="bfloat16")
  load_before = os.getloadavg()[0]
  t_masked = _time(run_masked(masked_cfg), args.runs)
  t_dense = _time(run_dense(dense_cfg), args.runs)
  t_masked16 = _time(run_masked(bf16(masked_cfg)), args.runs)
  t_dense16 = _time(run_dense(bf16(dense_cfg)), args.runs)
  result = {
      "bench": "sampling",
      "backend": jax.default_backend(),
      "device": jax.devices()[0].device_kind,
      "batch": b,
      "masked": {"steps": args.steps, "layers": f"{args.layers}+{args.layers}",
                 **entry(t_masked, args.steps)},
      "dense": {"steps": n, "layers": 2 * args.layers, **entry(t_dense, n)},
      "masked_over_dense_images_per_s": round(t_dense[0] / t_masked[0], 2),
      "masked_bf16_weights": entry(t_masked16, args.steps),
      "dense_bf16_weights": entry(t_dense16, n),
      "official_uncached_tokens_per_s": 220,
      "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # Before, after.
  }
  result["masked"]["speedup_vs_official"] = round(result["masked"]["tokens_per_s"] / 220, 1)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
