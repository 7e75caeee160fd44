r"""Per-thunk CPU profile of a benchmark step: where the time goes, and how fast each matmul/conv is.

Traces a few calls of (a) the MQ-VAE forward + backward of `bench_mqvae.py` or (b) the Stackformer
sampler of `bench_sampling.py` with `jax.profiler`, reads every XLA thunk's duration back with
`jax.profiler.ProfileData`, takes each convolution / dot thunk's FLOPs from the optimized HLO and
prints one table: time per call, GFLOP, GFLOP/s, op name; plus how long one vs. two thunks ran at
once. This is how the numbers in BENCHMARKS.md's profiling notes were taken. Imports no TensorFlow.

  python benchmarks/profile_cpu.py --what mqvae [--top 25]
  python benchmarks/profile_cpu.py --what sampling --weight_dtype bfloat16
"""
import argparse
import collections
import dataclasses
import functools
import glob
import math
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp

CALLS = 3


def _mqvae():
  import bench_mqvae  # pylint: disable=import-outside-toplevel
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 64, 64, 3), jnp.float32, -1.0, 1.0)
  return bench_mqvae.fwd_bwd_step(False, x)


def _sampling(weight_dtype):
  import bench_sampling  # pylint: disable=import-outside-toplevel
  from maskvq_jax.stage2 import sampling  # pylint: disable=import-outside-toplevel
  m, params, cfg = bench_sampling.masked_setup()
  cfg = dataclasses.replace(cfg, weight_dtype=weight_dtype)
  step = functools.partial(sampling._sample_stackformer, labels=None, text=None,  # pylint: disable=protected-access
                           text_mask=None, guidance_scale=None, model=m, config=cfg, batch_size=8,
                           return_logits=False)
  return step, (params, jax.random.key(1))


def _flops(hlo: str) -> dict:
  """{thunk name: FLOPs} for fusions/ops that contain a convolution or dot."""
  shapes = lambda s: [int(v) for v in s.split(",") if v]
  comps = {m.group(1): m.group(2) for m in
           re.finditer(r"^%([\w.\-]+) \(.*?\n(.*?)^}", hlo, re.M | re.S)}
  def body_flops(body):
    total = 0
    for m in re.finditer(r"= \w+\[([\d,]*)\]\S* convolution\(%([\w.\-]+), %([\w.\-]+)\).*?"
                         r"dim_labels=\w+_(\w+)->", body):
      rhs = re.search(r"%" + re.escape(m.group(3)) + r" = \w+\[([\d,]*)\]", body)
      if rhs:
        r = shapes(rhs.group(1))
        total += 2 * math.prod(shapes(m.group(1))) * math.prod(r) // r[m.group(4).index("o")]
    for m in re.finditer(r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %[\w.\-]+\).*?"
                         r"lhs_contracting_dims=\{([\d,]*)\}", body):
      lhs = re.search(r"%" + re.escape(m.group(2)) + r" = \w+\[([\d,]*)\]", body)
      if lhs:
        k = math.prod(shapes(lhs.group(1))[int(i)] for i in m.group(3).split(","))
        total += 2 * math.prod(shapes(m.group(1))) * k
    return total
  out = {}
  for m in re.finditer(r"%([\w.\-]+) = [^\n]*?(?:calls=%([\w.\-]+)|(?:convolution|dot)\()", hlo):
    name, callee = m.group(1), m.group(2)
    f = body_flops(comps.get(callee, "")) if callee else body_flops(m.group(0) + "\n" + hlo)
    if f:
      out[name] = f
  return out


def _op_names(hlo: str) -> dict:
  """{thunk name: the layer it comes from}, from its own metadata or its fused computation's."""
  comps = {m.group(1): m.group(2) for m in
           re.finditer(r"^%([\w.\-]+) \(.*?\n(.*?)^}", hlo, re.M | re.S)}
  out = {}
  for m in re.finditer(r"^\s*%([\w.\-]+) = ([^\n]*)", hlo, re.M):
    line = m.group(2)
    callee = re.search(r"calls=%([\w.\-]+)", line)
    meta = re.search(r'op_name="([^"]*)"', line) or (
        callee and re.search(r'op_name="([^"]*)"', comps.get(callee.group(1), "")))
    if meta:
      parts = [p for p in meta.group(1).split("/") if p and not p.startswith(("jit(", "jvp(",
                                                                          "transpose("))]
      out[m.group(1)] = "/".join(parts[-3:-1]) or meta.group(1)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--what", choices=("mqvae", "sampling"), default="mqvae")
  ap.add_argument("--weight_dtype", default=None)
  ap.add_argument("--top", type=int, default=25)
  a = ap.parse_args()
  fn, args = _mqvae() if a.what == "mqvae" else _sampling(a.weight_dtype)
  compiled = jax.jit(fn).lower(*args).compile()
  hlo = compiled.as_text()
  names = _op_names(hlo)
  flops = _flops(hlo)
  jax.block_until_ready(compiled(*args))
  trace = tempfile.mkdtemp(prefix="maskvq_profile_")
  jax.profiler.start_trace(trace)
  for _ in range(CALLS):
    jax.block_until_ready(compiled(*args))
  jax.profiler.stop_trace()
  data = jax.profiler.ProfileData.from_file(glob.glob(f"{trace}/**/*.xplane.pb", recursive=True)[0])
  events = []
  for plane in data.planes:
    for line in plane.lines:
      if line.name.startswith("tf_XLA"):
        events += [(e.start_ns, e.duration_ns, e.name) for e in line.events
                   if not e.name.startswith(("ThunkExecutor", "end:", "Threadpool"))]
  per, runs = collections.Counter(), collections.Counter()
  for _, d, n in events:
    per[n] += d / CALLS / 1e6  # ms per call
    runs[n] += 1 / CALLS       # executions per call (> 1 inside a decode loop)
  total = sum(per.values())
  print(f"{a.what}: {len(per)} thunks, {total:.1f} thread-ms per call (XLA cost analysis: "
        f"{compiled.cost_analysis().get('flops', 0) / 1e9:.2f} GFLOP, loop bodies counted once)")
  print(f"{'ms/call':>8} {'runs':>5} {'us/run':>7} {'MFLOP/run':>9} {'GFLOP/s':>8}  thunk  (op)")
  for n, ms in per.most_common(a.top):
    mf, us = flops.get(n, 0) / 1e6, ms * 1e3 / max(runs[n], 1e-9)
    rate = f"{mf / us * 1e3:8.1f}" if mf and us else " " * 8
    print(f"{ms:8.2f} {runs[n]:5.0f} {us:7.1f} {mf:9.1f} {rate}  {n}  ({names.get(n, '')})")
  pts = sorted([(s, 1) for s, d, _ in events] + [(s + d, -1) for s, d, _ in events])
  running, last, hist = 0, pts[0][0], collections.Counter()
  for t, step in pts:
    hist[running] += t - last
    running, last = running + step, t
  print("thunks running at once, ms per call:",
        {k: round(v / CALLS / 1e6, 1) for k, v in sorted(hist.items()) if k >= 0})


if __name__ == "__main__":
  main()
