"""Stage-2 sampling for evaluation: Stackformer codes/positions -> tokenizer decode -> uint8.

Why here and not in the sampler: FID needs tens of thousands of images drawn in fixed-size,
batch-sharded chunks, decoded by the tokenizer on device, gathered to the host as uint8 (what a
saved PNG holds), plus the sampling throughput (tokens/s) the ablation table reports. The sampler
itself (`maskvq_jax/stage2/sampling.py`) stays a pure function of one batch.

Batch b of a run uses `fold_in(key(seed), b)`, so a run is reproducible for a fixed global batch
size. Class-conditional models get balanced labels (image i -> class i mod n_classes). The last
batch is sampled in full and its surplus images are discarded (extra draws, not padding, so no
bias). Throughput excludes the first batch (compilation) whenever there are at least two.
"""
import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.stage2 import sampling
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.evaluation import features
from maskvq_jax.evaluation import recon


def sample_images(stackformer, stackformer_variables, tokenizer, tokenizer_variables,
                  config: sampling.SamplerConfig, *, num_images: int, batch_size: int,
                  seed: int = 0, mesh: Optional[jax.sharding.Mesh] = None,
                  progress: Optional[Callable[[int], None]] = None):
  """Draws `num_images` images; returns (uint8 [num_images, H, W, 3], timing dict).

  Args:
    stackformer, stackformer_variables: the stage-2 model (a Stackformer, or the DenseGPT
      baseline on a dense tokenizer) and its {"params": ...}.
    tokenizer, tokenizer_variables: the frozen MQVAE and its variables.
    config: sampler settings; `config.steps` must equal the tokenizer's tokens per image.
    num_images: images to return. batch_size: global batch per sampling call (padded up to a
      multiple of the number of devices). seed: base PRNG seed.
  """
  dense = isinstance(stackformer, DenseGPT)
  if not dense and stackformer.text_dim:
    raise ValueError("text-conditional Stackformers need captions; evaluate them with --samples "
                     "drawn by your own captions")
  if config.steps != tokenizer.num_tokens:
    raise ValueError(f"sampler steps={config.steps} != tokenizer tokens per image "
                     f"{tokenizer.num_tokens}")
  if stackformer.codebook_size != tokenizer.codebook_size:
    raise ValueError(f"Stackformer codebook_size={stackformer.codebook_size} != tokenizer "
                     f"codebook_size={tokenizer.codebook_size}")
  if num_images < 1:
    raise ValueError(f"num_images={num_images} must be >= 1")
  mesh = features.data_mesh() if mesh is None else mesh
  batch_size = sharding_lib.padded_size("batch_size", batch_size, mesh.size)  # surplus dropped
  rules = sharding_lib.data_axis_rules()  # batch on the single "data" axis, rest replicated
  batch_sh, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  sf_vars = jax.device_put(stackformer_variables, repl)
  tok_vars = jax.device_put(tokenizer_variables, repl)
  decode = jax.jit(lambda v, c, p: recon.quantize_u8(jnp.clip(tokenizer.apply(
      v, c, p, method="decode_codes").astype(jnp.float32), -1.0, 1.0)),
                   in_shardings=(repl, batch_sh, batch_sh), out_shardings=batch_sh)
  key = jax.random.key(seed)
  n_batches = -(-num_images // batch_size)
  out, times = [], []
  for b in range(n_batches):
    t0 = time.perf_counter()
    labels = None
    if not dense and stackformer.n_classes:
      labels = jax.device_put(
          (np.arange(b * batch_size, (b + 1) * batch_size) % stackformer.n_classes).astype(np.int32),
          batch_sh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      if dense:
        s = sampling.sample_dense(stackformer, sf_vars, jax.random.fold_in(key, b), config,
                                  batch_size=batch_size)
      else:
        s = sampling.sample(stackformer, sf_vars, jax.random.fold_in(key, b), config,
                            labels=labels, batch_size=None if labels is not None else batch_size)
      codes = jax.device_put(s.codes, batch_sh)
      positions = jax.device_put(s.positions, batch_sh)
      jax.block_until_ready((codes, positions))
    times.append(time.perf_counter() - t0)
    out.append(sharding_lib.to_host(decode(tok_vars, codes, positions)))
    if progress is not None:
      progress(min((b + 1) * batch_size, num_images))
  timed = times[1:] if len(times) > 1 else times
  secs = float(np.sum(timed))
  imgs = batch_size * len(timed)
  timing = {"sampling_seconds": float(np.sum(times)), "images_per_s": imgs / secs,
            "tokens_per_s": imgs * config.steps / secs, "tokens_per_image": config.steps,
            "throughput_includes_compile": len(times) == 1}
  return np.concatenate(out)[:num_images], timing
