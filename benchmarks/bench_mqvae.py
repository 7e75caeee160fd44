r"""Stage-1 throughput benchmark; prints one JSON line. Imports no TensorFlow.

Bench config: 64 px, ch 64, ch_mult (1,1,2), 2 res blocks, attention at 16, z 128, 16x16 grid,
keep 0.25 (K = 64), codebook 1024x128, 4 de-mask layers, batch 8, random init.
  (a) train_fwd_bwd: forward + backward of L1 + quantizer loss, training mode (EMA codebook and
      BatchNorm statistics updated), jitted with donation;
  (b) gan_step: the full stage-1 GAN step (trainers/mqvae.train_step, LPIPS + PatchGAN + adaptive
      weight + both Adam updates);
  (c) recon: inference reconstruction (train=False);
  (d) dense_fwd_bwd: (a) for the same backbone without mask/de-mask (dense=True).
Reference on the 2-core CPU (authors' PyTorch code): (a) 12.3 img/s, (c) 44.2 img/s.

  python benchmarks/bench_mqvae.py [--iters 10] [--batch 8]
"""
import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from maskvq_jax.models import MQVAE
from maskvq_jax.stage1 import trainer

BENCH = dict(resolution=64, in_channels=3, out_channels=3, ch=64, ch_mult=(1, 1, 2), num_res_blocks=2,
             attn_resolutions=(16,), z_channels=128, dropout=0.0, scorer="conv", keep_ratio=0.25,
             codebook_size=1024, codebook_dim=128, beta=0.25, ema_decay=0.99,
             restart_unused_codes=True, demasker_layers=4, mask_init_value=0.02)
AUTHORS = {"train_fwd_bwd": 12.3, "recon": 44.2}


def _time(fn, args_fn, iters, batch):
  out = fn(*args_fn(None))
  jax.block_until_ready(out)
  out = fn(*args_fn(out))
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(iters):
    out = fn(*args_fn(out))
  jax.block_until_ready(out)
  return batch * iters / (time.perf_counter() - t)


def _init(model, x):
  return nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0),
                                   "vq_restart": jax.random.PRNGKey(1),
                                   "mask": jax.random.PRNGKey(2)}, x, train=False))


def fwd_bwd_step(dense, x):
  """(step, (params, cols, key)) of (a)/(d): grads of L1 + qloss and the updated EMA / BN
  collections; also what benchmarks/profile_cpu.py traces."""
  model = MQVAE(**BENCH, dense=dense)
  v = _init(model, x)
  params, cols = v["params"], {k: v[k] for k in v if k != "params"}

  def step(params, cols, key):
    def loss(p):
      (rec, aux), new = model.apply({"params": p, **cols}, x, train=True,
                                    mutable=["batch_stats", "vq_stats"],
                                    rngs={"vq_restart": key, "mask": key})
      return jnp.mean(jnp.abs(x - rec)) + aux["qloss"], new
    grads, new = jax.grad(loss, has_aux=True)(params)
    return grads, new
  return step, (params, cols, jax.random.PRNGKey(3))


def bench_fwd_bwd(dense, x, iters):
  """(a)/(d), jitted with donation of the collections (fed back each call)."""
  step_fn, (params, cols, key) = fwd_bwd_step(dense, x)
  step = jax.jit(step_fn, donate_argnums=(1,))
  state = {"cols": cols}

  def args(out):
    if out is not None:
      state["cols"] = out[1]
    return params, state["cols"], key
  return _time(step, args, iters, x.shape[0])


def bench_recon(x, iters):
  model = MQVAE(**BENCH)
  v = _init(model, x)
  f = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  return _time(f, lambda out: (v, x), iters, x.shape[0])


def bench_gan_step(x, iters):
  c = common.stage1_base(keep=0.25, scorer="conv", dense=False, batch=x.shape[0], res=64)
  c.model.update(BENCH)
  c.total_steps, c.optim.warmup_steps = 1000, 0
  parts = trainer.build(c)
  state = nn.meta.unbox(jax.jit(functools.partial(trainer.create_state, parts=parts))(
      jax.random.PRNGKey(0)))
  lp = jax.device_put(parts.lpips.load_params())
  batch = {"image": jnp.asarray((x + 1) * 127.5, jnp.uint8)}
  step = jax.jit(functools.partial(trainer.train_step, parts=parts), donate_argnums=(0,))
  holder = {"s": state}

  def args(out):
    if out is not None:
      holder["s"] = out[0]
    return holder["s"], batch, lp
  return _time(step, args, iters, x.shape[0])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--batch", type=int, default=8)
  a = ap.parse_args()
  x = jax.random.uniform(jax.random.PRNGKey(0), (a.batch, 64, 64, 3), jnp.float32, -1.0, 1.0)
  r = {"train_fwd_bwd": bench_fwd_bwd(False, x, a.iters), "gan_step": bench_gan_step(x, a.iters),
       "recon": bench_recon(x, a.iters), "dense_fwd_bwd": bench_fwd_bwd(True, x, a.iters)}
  out = {k: round(v, 2) for k, v in r.items()}
  out.update(unit="images/s", batch=a.batch, iters=a.iters, backend=jax.default_backend(),
             devices=jax.device_count(),
             speedup_train_vs_authors=round(r["train_fwd_bwd"] / AUTHORS["train_fwd_bwd"], 2),
             speedup_recon_vs_authors=round(r["recon"] / AUTHORS["recon"], 2),
             mask_cost_dense_over_masked=round(r["dense_fwd_bwd"] / r["train_fwd_bwd"], 2),
             tensorflow_imported="tensorflow" in sys.modules)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
