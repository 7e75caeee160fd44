r"""Compile time of the training steps, scanned vs unrolled layers; prints one JSON line.

Each step is the trainer's own (`stage2.trainer.train_step` / `stage1.trainer.train_step`, jitted
with the trainers' shardings and donation), lowered on the abstract train state
(`jax.eval_shape` of `create_state`: no parameter is allocated) and compiled; the key
`<model>_<scanned|unrolled>_compile_s` is the wall time of `jax.jit(...).lower(...).compile()`
(`..._compile_cpu_s`: the process's CPU seconds over it, steadier on a shared machine;
`..._temp_gb`: XLA's temporary buffers of the compiled step per device, from memory_analysis;
`<model>_compile[_cpu]_speedup`: unrolled / scanned). The persistent compilation cache is off
and a tiny model is compiled first (backend start-up), so every figure is a cold compile.

  stackformer_307m  configs/stackformer_ffhq256.py (d 1024, 12 + 12 layers), exported-token batch
                    on a 256 px tokenizer keeping 25 % (K = 256)
  stackformer_612m  configs/stackformer_imagenet256_class.py:large (24 + 24 layers), class labels
  mqvae_ffhq        configs/mqvae_ffhq256.py: the full GAN step (MQ-VAE + LPIPS + PatchGAN, both
                    Adam updates). The de-masker has no scanned form: only `_unrolled` is timed
                    and `_scanned` is null.

  python benchmarks/bench_compile.py                       # everything (unrolled 24 + 24: ~20 min)
  python benchmarks/bench_compile.py --models stackformer_307m --kinds scanned
  python benchmarks/bench_compile.py --layers 4 --mqvae_res 64 --batch 8   # a quick check
  python benchmarks/bench_compile.py --batch 2 --steps 3    # + step times at batch 2 (CPU)

--layers N gives both Stackformer stacks N layers (the size check above); --mqvae_res R the MQ-VAE
resolution (attention at R / 8, as at 256); --batch the global batch (default: the config's);
--steps N also runs every compiled step N times on a fresh (random-init) state and random batch
and reports the median wall seconds as `<model>_<kind>_step_s`, and
`<model>_step_scanned_over_unrolled` (> 1: scanning made the step slower).
"""
import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from configs import mqvae_ffhq256  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import stackformer_ffhq256
from configs import stackformer_imagenet256_class
from maskvq_jax.core import loop
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.models.mqvae import MQVAE
from maskvq_jax.stage1 import trainer as stage1
from maskvq_jax.stage2 import trainer as stage2

STACKFORMERS = {
    "stackformer_307m": lambda: stackformer_ffhq256.get_config("tokenizer=bench"),
    "stackformer_612m": lambda: stackformer_imagenet256_class.get_config("tokenizer=bench,large"),
}
MODELS = tuple(STACKFORMERS) + ("mqvae_ffhq",)
TOKENIZER = MQVAE(resolution=256, keep_ratio=0.25)  # 32 x 32 grid, 1024 codes, K = 256


def _compile(step, state_sh, batch_sh, repl, abstract, batch, extra, mesh, rules) -> tuple:
  """(wall, CPU) seconds to lower and compile `step` as the trainers jit it (abstract inputs),
  and the compiled step.

  CPU seconds (all threads of this process) are the steadier figure on a shared machine.
  """
  fn = jax.jit(step, in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
               donate_argnums=(0,))
  t, c = time.perf_counter(), time.process_time()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = fn.lower(abstract, batch, extra).compile()
  return time.perf_counter() - t, time.process_time() - c, compiled


def _temp_gb(compiled):
  """XLA's temporary buffer size of the compiled step per device (GB; None where not reported):
  what the step needs beyond its (donated) state and batch, e.g. saved activations."""
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 1e9
  except Exception:  # pylint: disable=broad-except  (backends without memory stats)
    return None


def _step_seconds(compiled, create, mesh, rules, state_sh, batch, extra, steps: int) -> dict:
  """Median wall seconds per call of the compiled step on a fresh state (after one warm-up call).

  `batch` holds host arrays already laid out with the batch sharding; the state is donated each
  call and replaced by the step's output, as in the trainers' loops.
  """
  state = loop.init_state(create, jax.random.PRNGKey(0), mesh, rules, state_sh)
  times = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for i in range(steps + 1):
      t = time.perf_counter()
      state, metrics = compiled(state, batch, extra)
      jax.block_until_ready((state, metrics))
      if i:  # the first call pays the allocation of the outputs
        times.append(time.perf_counter() - t)
  del state
  times.sort()
  return {"step_s": times[len(times) // 2], "step_runs": steps}


def _shapes(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def stackformer(name: str, scanned: bool, layers: int, batch: int, width: int = 0,
                steps: int = 0) -> dict:
  c = STACKFORMERS[name]()
  if layers > 0:
    c.model.update(code_layers=layers, position_layers=layers)
  if width > 0:  # the warm-up's tiny model
    c.model.update(d_model=width, n_heads=4)
  if batch > 0:
    c.input.batch_size = batch
  c.model.scan_layers = scanned
  c = stage2.resolve_config(c, TOKENIZER)
  stage2.validate_config(c, jax.device_count(), TOKENIZER.num_tokens)
  parts = stage2.build(c, TOKENIZER)
  mesh = sharding_lib.make_mesh(c.mesh)
  rules = sharding_lib.get_rules(c.sharding_rules)
  abstract, state_sh = sharding_lib.state_shardings(
      functools.partial(stage2.create_state, parts=parts), jax.random.PRNGKey(0), mesh=mesh,
      rules=rules)
  b, k = c.input.batch_size, TOKENIZER.num_tokens
  data = {"codes": jax.ShapeDtypeStruct((b, k), jnp.int32),
          "positions": jax.ShapeDtypeStruct((b, k), jnp.int32)}
  if c.model.n_classes:
    data["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  batch_sh = sharding_lib.batch_sharding(mesh, rules)
  secs, cpu, compiled = _compile(functools.partial(stage2.train_step, parts=parts), state_sh,
                                 batch_sh, sharding_lib.replicated(mesh), abstract, data, None,
                                 mesh, rules)
  out = {"compile_s": secs, "compile_cpu_s": cpu, "temp_gb": _temp_gb(compiled),
         "params_M": loop.num_params(abstract.params) / 1e6,
         "layers": [c.model.code_layers, c.model.position_layers], "batch": b}
  if steps:
    rng = np.random.default_rng(0)
    grid = TOKENIZER.grid ** 2
    host = {"codes": rng.integers(0, TOKENIZER.codebook_size, (b, k), dtype=np.int32),
            # each row: K distinct positions of the grid in raster order, as the exporter writes
            "positions": np.sort(np.argsort(rng.random((b, grid)), axis=1)[:, :k], axis=1)
                         .astype(np.int32)}
    if c.model.n_classes:
      host["label"] = rng.integers(0, c.model.n_classes, (b,), dtype=np.int32)
    out.update(_step_seconds(compiled, functools.partial(stage2.create_state, parts=parts), mesh,
                             rules, state_sh, jax.device_put(host, batch_sh), None, steps))
  return out


def mqvae(res: int, batch: int, steps: int = 0) -> dict:
  c = mqvae_ffhq256.get_config()
  if res != c.model.resolution:
    c.model.update(resolution=res, attn_resolutions=(res // 8,))
    c.input.res = res
  if batch > 0:
    c.input.batch_size = c.eval.batch_size = batch
  stage1.validate_config(c, jax.device_count())
  parts = stage1.build(c)
  mesh = sharding_lib.make_mesh(c.mesh)
  rules = sharding_lib.get_rules(c.sharding_rules)
  abstract, state_sh = sharding_lib.state_shardings(
      functools.partial(stage1.create_state, parts=parts), jax.random.PRNGKey(0), mesh=mesh,
      rules=rules)
  b = c.input.batch_size
  data = {"image": jax.ShapeDtypeStruct((b, res, res, 3), jnp.uint8)}
  lpips = _shapes(parts.lpips.load_params()) if c.loss.perceptual_weight > 0 else None
  batch_sh, repl = sharding_lib.batch_sharding(mesh, rules), sharding_lib.replicated(mesh)
  secs, cpu, compiled = _compile(functools.partial(stage1.train_step, parts=parts), state_sh,
                                 batch_sh, repl, abstract, data, lpips, mesh, rules)
  out = {"compile_s": secs, "compile_cpu_s": cpu, "temp_gb": _temp_gb(compiled),
         "params_M": loop.num_params(abstract.params["g"]) / 1e6, "res": res, "batch": b}
  if steps:
    host = {"image": np.random.default_rng(0).integers(0, 256, (b, res, res, 3), dtype=np.uint8)}
    lpips_params = (jax.device_put(parts.lpips.load_params(), repl)
                    if c.loss.perceptual_weight > 0 else None)
    out.update(_step_seconds(compiled, functools.partial(stage1.create_state, parts=parts), mesh,
                             rules, state_sh, jax.device_put(host, batch_sh), lpips_params, steps))
  return out


def _round(x, n):
  return None if x is None else round(x, n)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(MODELS),
                 help=f"comma-separated subset of {','.join(MODELS)}")
  p.add_argument("--kinds", default="scanned,unrolled",
                 help="which Stackformer layouts to time, in this order (e.g. `scanned` alone, or "
                      "`unrolled,scanned` to check that the order does not move the step times)")
  p.add_argument("--layers", type=int, default=0,
                 help="layers per Stackformer stack (0: the config's 12 / 24)")
  p.add_argument("--mqvae_res", type=int, default=256, help="MQ-VAE resolution (multiple of 8)")
  p.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
  p.add_argument("--steps", type=int, default=0,
                 help="also run each compiled step this many times on a fresh state (after one "
                      "warm-up call) and report the median as <model>_<kind>_step_s; use a small "
                      "--batch on a CPU")
  args = p.parse_args(argv)
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  bad = [m for m in models if m not in MODELS]
  if bad or not models:
    p.error(f"--models={args.models!r}: unknown {bad}; choose from {','.join(MODELS)}")
  kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
  if not kinds or len(set(kinds)) != len(kinds) or set(kinds) - {"scanned", "unrolled"}:
    p.error(f"--kinds={args.kinds!r}: give scanned and / or unrolled, each once")
  if (args.layers < 0 or args.batch < 0 or args.steps < 0 or args.mqvae_res < 8
      or args.mqvae_res % 8):
    p.error(f"--layers={args.layers} / --batch={args.batch} / --steps={args.steps} must be >= 0 "
            f"and --mqvae_res={args.mqvae_res} a positive multiple of 8")
  jax.config.update("jax_enable_compilation_cache", False)  # cold compiles only

  for scanned in (True, False):  # warm-up: backend start, first traces of the shared code
    stackformer(MODELS[0], scanned, 1, jax.device_count(), width=64)  # one row per device
  out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
         "num_devices": jax.device_count(), "jax_version": jax.__version__}
  for m in models:
    if m == "mqvae_ffhq":
      out[f"{m}_scanned_compile_s"] = None  # no scanned form of the de-masker / MQ-VAE
      if "unrolled" in kinds:
        r = mqvae(args.mqvae_res, args.batch, args.steps)
        out[f"{m}_unrolled_compile_s"] = round(r.pop("compile_s"), 2)
        out[f"{m}_unrolled_compile_cpu_s"] = round(r.pop("compile_cpu_s"), 2)
        out[f"{m}_unrolled_temp_gb"] = _round(r.pop("temp_gb"), 3)
        if args.steps:
          out[f"{m}_unrolled_step_s"] = round(r.pop("step_s"), 4)
        out[f"{m}_info"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
      continue
    for kind in kinds:
      r = stackformer(m, kind == "scanned", args.layers, args.batch, steps=args.steps)
      out[f"{m}_{kind}_compile_s"] = round(r.pop("compile_s"), 2)
      out[f"{m}_{kind}_compile_cpu_s"] = round(r.pop("compile_cpu_s"), 2)
      out[f"{m}_{kind}_temp_gb"] = _round(r.pop("temp_gb"), 3)
      if args.steps:
        out[f"{m}_{kind}_step_s"] = round(r.pop("step_s"), 4)
      out[f"{m}_info"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
    if len(kinds) == 2:
      for unit in ("", "_cpu"):  # unrolled / scanned compile time
        out[f"{m}_compile{unit}_speedup"] = round(out[f"{m}_unrolled_compile{unit}_s"]
                                                  / out[f"{m}_scanned_compile{unit}_s"], 2)
      if args.steps:  # > 1: the scanned step is slower
        out[f"{m}_step_scanned_over_unrolled"] = round(out[f"{m}_scanned_step_s"]
                                                       / out[f"{m}_unrolled_step_s"], 3)
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
