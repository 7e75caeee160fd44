r"""Accelerator checks and throughput at the paper's sizes (one script, one JSON line per section).

  python benchmarks/gpu_bench.py --golden path/to/official_small.npz --out results.jsonl
  python benchmarks/gpu_bench.py --small            # CPU smoke run of every section at toy sizes

Sections (each independent; a failing one prints {"section": ..., "error": ...} and the rest go on):
  golden       float32 parity with the authors' code on this device (check_golden rows)
  bf16         bf16-compute vs float32 loss agreement (MQ-VAE and Stackformer, same weights/batch)
  stackformer  training step of the FFHQ 307M Stackformer (d 1024, 16 heads, 12+12 layers, K 256):
               bf16 compute / float32 params, AdamW; model FLOPs utilisation for each attention
               implementation ("xla" einsum softmax, "dot_product" = jax.nn.dot_product_attention)
               with and without remat
  mqvae        MQ-VAE FFHQ config (256 px, ch 128, 1-1-2-2, keep 0.25, 8 de-mask layers) generator
               + PatchGAN step (L1 + commitment + hinge, adaptive weight; no LPIPS: its VGG weights
               ship in a package the device image lacks), FLOPs from XLA's cost analysis
  sampling     KV-cached sampling of the 307M Stackformer (K = 256 steps) at batch 1 and 256, images/s
               against the floor of reading every bf16 weight once per step at the HBM bandwidth

Imports no TensorFlow, clu, grain or ml_collections.
"""
import argparse
import json
import statistics
import sys
import time
import traceback

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

PEAK_BF16_FLOPS = 790e12  # H200 dense bf16 matmul, measured
HBM_BYTES_PER_S = 4.8e12


def timed(fn, *args, runs=5):
  out = jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def timed_compiled(fn, *args, runs=5):
  """Compiles `fn` once for `args`; returns (median seconds, output, XLA cost-analysis FLOPs)."""
  compiled = jax.jit(fn).lower(*args).compile()
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    flops = float("nan")
  sec, out = timed(compiled, *args, runs=runs)
  return sec, out, flops


def emit(out, record):
  line = json.dumps(record, sort_keys=True)
  print(line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")


# ----------------------------------------------------------------------------- sections
def section_golden(args):
  from maskvq_jax.tools import check_golden
  rows, skipped = check_golden.check_file(args.golden)
  return dict(passed=sum(r.passed for r in rows), failed=[r.key for r in rows if not r.passed],
              skipped=skipped, max_rel=max(r.max_rel for r in rows),
              worst=max(rows, key=lambda r: r.max_rel).key)


def mqvae_kwargs(small):
  if small:
    return dict(resolution=32, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(8,),
                z_channels=64, keep_ratio=0.25, codebook_size=128, codebook_dim=64, demasker_layers=2)
  return dict(resolution=256, ch=128, ch_mult=(1, 1, 2, 2), num_res_blocks=2, attn_resolutions=(32,),
              z_channels=256, keep_ratio=0.25, codebook_size=1024, codebook_dim=256, demasker_layers=8)


def stackformer_kwargs(small):
  if small:
    return dict(vocab_size=129, position_size=65, block_size=64, d_model=64, n_heads=4, code_layers=2,
                position_layers=2), 16
  return dict(vocab_size=1025, position_size=1025, block_size=1024, d_model=1024, n_heads=16,
              code_layers=12, position_layers=12, embd_dropout=0.1, resid_dropout=0.1,
              attn_dropout=0.1), 256


def _token_batch(b, k, kw, seed=0):
  rng = np.random.default_rng(seed)
  n = kw["position_size"] - 1
  codes = rng.integers(0, kw["vocab_size"] - 1, (b, k))
  pos = np.sort(np.stack([rng.permutation(n)[:k] for _ in range(b)]), axis=1)
  idx = np.concatenate([np.full((b, 1), kw["vocab_size"] - 1), codes], 1)
  pos_idx = np.concatenate([np.full((b, 1), n), pos], 1)
  return jnp.asarray(idx, jnp.int32), jnp.asarray(pos_idx, jnp.int32)


def stackformer_loss(model, params, idx, pos_idx, rng):
  code_logits, pos_logits = model.apply(params, idx[:, :-1], pos_idx[:, :-1], idx[:, 1:], train=True,
                                        rngs={"dropout": rng})
  ce = optax.softmax_cross_entropy_with_integer_labels
  return jnp.mean(ce(code_logits, idx[:, 1:])) + jnp.mean(ce(pos_logits, pos_idx[:, 1:]))


def section_bf16(args):
  from maskvq_jax.models import MQVAE
  from maskvq_jax.models.stackformer import Stackformer
  kw = mqvae_kwargs(True)
  x = jax.random.uniform(jax.random.key(0), (4, kw["resolution"], kw["resolution"], 3), minval=-1, maxval=1)
  v = nn.meta.unbox(MQVAE(**kw).init({"params": jax.random.key(1)}, x))
  out = {}
  losses = {}
  for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
    rec, aux = jax.jit(lambda v, x: MQVAE(**kw, dtype=dt).apply(v, x))(v, x)
    losses[name] = float(jnp.mean(jnp.abs(rec.astype(jnp.float32) - x)) + aux["qloss"])
    out[f"mqvae_codes_{name}"] = np.asarray(aux["codes"])
  out["mqvae_loss_rel_diff"] = abs(losses["bf16"] - losses["f32"]) / abs(losses["f32"])
  out["mqvae_code_agreement"] = float(np.mean(out.pop("mqvae_codes_f32") == out.pop("mqvae_codes_bf16")))
  skw, k = stackformer_kwargs(True)
  idx, pos_idx = _token_batch(8, k, skw)
  p = Stackformer(**skw).init(jax.random.key(2), idx[:, :-1], pos_idx[:, :-1], idx[:, 1:])
  sl = {name: float(jax.jit(lambda p: stackformer_loss(Stackformer(**skw, dtype=dt), p, idx, pos_idx,
                                                          jax.random.key(3)))(p))
        for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16))}
  out["stackformer_loss_rel_diff"] = abs(sl["bf16"] - sl["f32"]) / abs(sl["f32"])
  out.update(mqvae_loss=losses, stackformer_loss=sl)
  return out


def section_stackformer(args):
  from maskvq_jax.models.stackformer import Stackformer
  kw, k = stackformer_kwargs(args.small)
  b = 4 if args.small else args.stackformer_batch
  idx, pos_idx = _token_batch(b, k, kw)
  results = []
  for variant in args.stackformer_variants.split(","):
    impl, _, remat = variant.partition("+")
    # Fused kernels have no attention-weight dropout: the fused variants train without it.
    vkw = {**kw, "attn_dropout": 0.0} if impl == "dot_product" else kw
    model = Stackformer(**vkw, dtype=jnp.bfloat16, attention_impl=impl, remat=remat == "remat")
    params = nn.meta.unbox(model.init(jax.random.key(0), idx[:1, :-1], pos_idx[:1, :-1], idx[:1, 1:]))
    n_params = sum(a.size for a in jax.tree.leaves(params))
    tx = optax.adamw(5e-4, b1=0.9, b2=0.95, weight_decay=0.01)
    opt = tx.init(params)

    def step(params, opt, idx, pos_idx, rng, model=model, tx=tx):
      loss, g = jax.value_and_grad(lambda p: stackformer_loss(model, p, idx, pos_idx, rng))(params)
      upd, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, upd), opt, loss

    sec, _, xla_flops = timed_compiled(step, params, opt, idx, pos_idx, jax.random.key(1), runs=args.runs)
    # Model FLOPs: 6 * non-embedding params * tokens + causal attention (6 * layers * T * d per token).
    emb = sum(a.size for n, t in params["params"].items() if n in ("value_emb", "value_pos_emb", "pos_emb")
              for a in jax.tree.leaves(t))
    layers = kw["code_layers"] + kw["position_layers"]
    tokens = b * k
    model_flops = 6 * (n_params - emb) * tokens + 6 * layers * k * kw["d_model"] * tokens
    results.append(dict(variant=variant, attn_dropout=vkw.get("attn_dropout", 0.0), batch=b, seq=k, step_s=sec,
                        n_params=int(n_params), tokens_per_s=tokens / sec, model_tflops=model_flops / sec / 1e12,
                        mfu=model_flops / sec / PEAK_BF16_FLOPS, xla_flops=xla_flops))
  return dict(runs=results)


def section_mqvae(args):
  from maskvq_jax.stage1 import losses
  from maskvq_jax.models import MQVAE
  from maskvq_jax.models.discriminator import NLayerDiscriminator
  kw = mqvae_kwargs(args.small)
  b = 2 if args.small else args.mqvae_batch
  res = {}
  for dt_name in args.mqvae_dtypes.split(","):
    dt = {"bf16": jnp.bfloat16, "f32": jnp.float32}[dt_name]
    model = MQVAE(**kw, dtype=dt)
    disc = NLayerDiscriminator()
    x = jax.random.uniform(jax.random.key(0), (b, kw["resolution"], kw["resolution"], 3), minval=-1, maxval=1)
    v = nn.meta.unbox(model.init({"params": jax.random.key(1)}, x[:1]))
    dv = nn.meta.unbox(disc.init(jax.random.key(2), x[:1]))
    tx = optax.adam(1e-4, b1=0.5, b2=0.9)
    opt_g, opt_d = tx.init(v["params"]), tx.init(dv["params"])

    def step(v, dv, opt_g, opt_d, x, key):
      def g_loss(params):
        (rec, aux), new = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats", "vq_stats"],
                                      rngs={"vq_restart": key})
        logits, _ = disc.apply(dv, rec, train=True, mutable=["batch_stats"])
        nll = losses.l1(rec, x)
        gan = losses.generator_loss(logits.astype(jnp.float32))
        return nll + 0.75 * gan + aux["qloss"], (rec, new)
      (lg, (rec, new)), gg = jax.value_and_grad(g_loss, has_aux=True)(v["params"])
      upd, opt_g = tx.update(gg, opt_g, v["params"])
      v = {**v, **new, "params": optax.apply_updates(v["params"], upd)}

      def d_loss(dparams):
        both, new_d = disc.apply({**dv, "params": dparams}, jnp.concatenate([x, jax.lax.stop_gradient(rec)]),
                                 train=True, mutable=["batch_stats"])
        real, fake = jnp.split(both.astype(jnp.float32), 2)
        return losses.hinge_d_loss(real, fake), new_d
      (ld, new_d), gd = jax.value_and_grad(d_loss, has_aux=True)(dv["params"])
      upd, opt_d = tx.update(gd, opt_d, dv["params"])
      dv = {**dv, **new_d, "params": optax.apply_updates(dv["params"], upd)}
      return v, dv, opt_g, opt_d, lg + ld

    sec, _, flops = timed_compiled(step, v, dv, opt_g, opt_d, x, jax.random.key(3), runs=args.runs)
    res[dt_name] = dict(batch=b, step_s=sec, images_per_s=b / sec, xla_flops=flops,
                        mfu=flops / sec / PEAK_BF16_FLOPS)
  return res


def section_sampling(args):
  from maskvq_jax.stage2 import sampling
  from maskvq_jax.models.stackformer import Stackformer
  kw, k = stackformer_kwargs(args.small)
  kw = {**kw, "embd_dropout": 0.0, "resid_dropout": 0.0, "attn_dropout": 0.0}
  model = Stackformer(**kw, dtype=jnp.bfloat16)
  tok = jnp.zeros((1, 2), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), tok, tok, tok))
  n_params = sum(a.size for a in jax.tree.leaves(params))
  cfg = sampling.SamplerConfig(steps=k, top_k=100, top_p=0.95, position_top_k=10, position_top_p=0.95)
  out = dict(n_params=int(n_params), steps=k, runs=[])
  for b in ((1, 8) if args.small else tuple(int(v) for v in args.sampling_batches.split(","))):
    sec, res = timed(lambda key: sampling.sample(model, params, key, cfg, batch_size=b), jax.random.key(1),
                     runs=args.runs)
    floor = k * n_params * 2 / HBM_BYTES_PER_S  # seconds to read bf16 weights once per step
    dup = max(len(set(row.tolist())) != k for row in np.asarray(res.positions))
    out["runs"].append(dict(batch=b, seconds=sec, images_per_s=b / sec, tokens_per_s=b * k / sec,
                            weight_read_floor_s=floor, floor_fraction=floor / sec, duplicate_positions=bool(dup)))
  return out


SECTIONS = dict(golden=section_golden, bf16=section_bf16, stackformer=section_stackformer,
                mqvae=section_mqvae, sampling=section_sampling)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sections", default=",".join(SECTIONS))
  ap.add_argument("--golden", default="../shared/golden/official_small.npz")
  ap.add_argument("--out", default="")
  ap.add_argument("--small", action="store_true", help="toy sizes (CPU smoke run)")
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--stackformer_batch", type=int, default=64)
  ap.add_argument("--mqvae_batch", type=int, default=16)
  ap.add_argument("--stackformer_variants", default="xla,dot_product,dot_product+remat",
                  help="attention implementation[+remat], comma separated")
  ap.add_argument("--mqvae_dtypes", default="bf16,f32")
  ap.add_argument("--sampling_batches", default="1,256")
  args = ap.parse_args(argv)
  device = jax.devices()[0]
  emit(args.out, dict(section="device", platform=device.platform, kind=getattr(device, "device_kind", ""),
                      jax=jax.__version__, date=time.strftime("%Y-%m-%d")))
  ok = True
  for name in args.sections.split(","):
    t0 = time.time()
    try:
      rec = dict(section=name, **SECTIONS[name](args))
    except Exception as e:  # pylint: disable=broad-except
      ok = False
      rec = dict(section=name, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
    rec["wall_s"] = round(time.time() - t0, 1)
    emit(args.out, rec)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
