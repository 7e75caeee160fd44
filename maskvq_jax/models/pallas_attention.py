"""Causal self-attention through jax's Pallas splash-attention TPU kernel (attention_impl="pallas").

Used by `transformer.Attention` for the teacher-forced (training / evaluation) forward of the
stage-2 transformers, where attention is causal over equal-length queries and keys. The kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`) is a flash-attention kernel with a
block-sparse causal mask: it never materialises the [L, L] scores and skips the blocks above the
diagonal; scores and softmax statistics are float32 inside it whatever the input dtype.

Layout and sizes: q, k, v are [B, H, L, Dh] (the layout `Attention` already has); the kernel runs
per example ([H, L, Dh], vmapped over B). L is zero-padded at the end to a multiple of 128 (the
kernel's lane width) and the output cropped: under a causal mask a real query never sees a padded
key, so padding needs no extra mask, and padded rows get no gradient. Block size: the largest of
512 / 256 / 128 that divides the padded length.

Sharding: under a mesh (`jax.set_mesh` + Linen logical rules, as the trainers run) the kernel is a
custom call the SPMD partitioner cannot split, so it runs under `jax.shard_map` over the
"batch" and "heads" mesh axes of the activations; a sharded length or head_dim axis, or a
batch / head count that does not divide its shards, is a reason to fall back (see `unavailable`).

On CPU / GPU the kernel cannot run; `transformer` then uses its XLA attention with one logged
note. Set `INTERPRET = True` (tests only) to run the kernel through Pallas' TPU interpreter on any
backend: slow, but the same kernel code, so CPU tests can compare it with the XLA attention.
Nothing here changes the decode path: KV-cached sampling attends one new token over a cache with
an explicit mask and keeps the XLA attention (a flash kernel does not pay there).
"""
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

LANES = 128  # the kernel's block sizes are multiples of this
BLOCKS = (512, 256, 128)  # tried in order; the first dividing the padded length is used
INTERPRET = False  # tests only: run the TPU kernel in Pallas' interpreter on any backend


def padded_length(n: int) -> int:
  """n rounded up to a multiple of LANES."""
  return -(-n // LANES) * LANES


def block_size(padded: int) -> int:
  """Kernel block (q and kv) for a padded length (a multiple of LANES)."""
  return next(b for b in BLOCKS if padded % b == 0)


@functools.lru_cache(maxsize=None)
def _kernel(heads: int, length: int, interpret: bool):
  """The splash kernel for [heads, length, Dh] inputs, causal, `length` a multiple of LANES."""
  # Imported here: the TPU kernel modules are only needed when the option is used.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm  # pylint: disable=g-import-not-at-top
  b = block_size(length)
  sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                        block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
  # The kernel holds its block-mask tables as arrays: made concrete here, not staged into the
  # trace that first asks for the kernel (it is cached across traces).
  with jax.ensure_compile_time_eval():
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _local(q, k, v, *, scale: float, interpret: bool):
  """Causal attention of one shard's q, k, v [b, h, L, Dh] (unpadded) -> [b, h, L, Dh]."""
  n = q.shape[2]
  lp = padded_length(n)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, lp - n), (0, 0))) if lp != n else x
  kernel = _kernel(q.shape[1], lp, interpret)
  q = (q * jnp.asarray(scale, q.dtype)).astype(q.dtype)  # the kernel does not scale
  out = jax.vmap(kernel)(pad(q), pad(k), pad(v))
  return out[:, :, :n]


def _mesh_spec(shape, names: Sequence[str]):
  """(mesh, per-dimension tuples of mesh axes or None) of a [B, H, L, Dh] activation under the
  current mesh and logical rules, restricted to the mesh's axes of size > 1; (None, None) without
  a mesh of more than one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None, None
  spec = nn.logical_to_mesh_axes(tuple(names))
  def keep(entry):
    axes = entry if isinstance(entry, tuple) else (entry,)
    axes = tuple(a for a in axes if a is not None and a in mesh.axis_names and mesh.shape[a] > 1)
    return axes or None
  entries = [keep(e) for e in tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))]
  return mesh, entries


def unavailable(shape, names: Sequence[str]) -> Optional[str]:
  """Why the kernel cannot run on a [B, H, L, Dh] causal self-attention here, or None.

  names: the activations' logical axis names (for the mesh sharding).
  """
  backend = jax.default_backend()
  if backend != "tpu" and not INTERPRET:
    return f"the Pallas splash kernel runs on TPU only, this backend is {backend}"
  mesh, spec = _mesh_spec(shape, names)
  if mesh is None:
    return None
  dims = ("batch", "heads", "length", "head_dim")
  for dim, size, axes in zip(dims, shape, spec):
    if axes is None:
      continue
    shards = 1
    for a in axes:
      shards *= mesh.shape[a]
    if dim in ("length", "head_dim"):
      return f"{dim} is sharded over mesh axes {axes}"
    if size % shards:
      return f"{dim}={size} does not divide its {shards} shards (mesh axes {axes})"
  return None


def causal_attention(q, k, v, *, scale: float, names: Sequence[str]):
  """softmax(scale q k^T + causal mask) v for q, k, v [B, H, L, Dh] -> [B, H, L, Dh].

  Call only where `unavailable(q.shape, names)` is None. Under a mesh of several devices the
  kernel runs per shard (`jax.shard_map` over the batch / heads mesh axes).
  """
  if q.shape != k.shape or q.shape != v.shape:
    raise ValueError(f"causal Pallas attention needs equal q/k/v shapes, got {q.shape}, "
                     f"{k.shape}, {v.shape}")
  local = functools.partial(_local, scale=scale, interpret=INTERPRET)
  mesh, entries = _mesh_spec(q.shape, names)
  if mesh is None:
    return local(q, k, v)
  spec = P(*entries)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)
