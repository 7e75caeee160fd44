"""The one place for mesh construction and sharding rules.

Models annotate parameters with logical axis names (`nn.with_logical_partitioning`) and
activations with `nn.with_logical_constraint`; this module maps those names to mesh axes through a
preset chosen by `config.sharding_rules`. Train-state shardings are read off `jax.eval_shape` of
the state constructor, and the input sharding comes from the same "batch" rule as the activations,
so the first constraint inside the model never reshards the input.

Meshes use `AxisType.Auto`: `jax.make_mesh` defaults to Explicit axes (jax >= 0.9), which turns
Linen's logical constraints into hard assertions.
"""
import math
from typing import Any, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

# Logical names used by the models: batch, embed, conv_in, conv_out, codebook, mlp, heads, vocab.
# The batch always spans ("data", "fsdp") so every device holds distinct examples; with fsdp=1
# that is plain data parallelism.
_BATCH = ("batch", ("data", "fsdp"))
RULES = {
    "dp": (_BATCH, ("embed", None), ("conv_in", None), ("conv_out", None), ("codebook", None),
           ("mlp", None), ("heads", None), ("vocab", None)),
    "fsdp": (_BATCH, ("embed", "fsdp"), ("conv_in", None), ("conv_out", "fsdp"), ("codebook", None),
             ("mlp", "fsdp"), ("heads", None), ("vocab", None)),
    "fsdp_tp": (_BATCH, ("embed", "fsdp"), ("conv_in", None), ("conv_out", "fsdp"),
                ("codebook", "model"), ("mlp", "model"), ("heads", "model"), ("vocab", "model")),
}


def get_rules(name: str):
  if name not in RULES:
    raise ValueError(f"unknown sharding_rules {name!r}; choose one of {sorted(RULES)}")
  return RULES[name]


def data_axis_rules(axis: str = "data"):
  """The "dp" preset for a 1-D mesh: the batch on `axis`, everything else replicated (the
  sampling CLI's and the evaluator's meshes)."""
  return tuple((name, axis) if name == "batch" else (name, None) for name, _ in RULES["dp"])


def mesh_shape(mesh_cfg: Sequence[tuple[str, int]], num_devices: int) -> tuple[tuple[str, ...],
                                                                               tuple[int, ...]]:
  """Resolves `(("data", -1), ("fsdp", 2), ...)` against the device count (-1 fills, at most once).

  Raises:
    ValueError: more than one -1, non-positive sizes, or a product different from num_devices.
  """
  names = tuple(str(n) for n, _ in mesh_cfg)
  sizes = [int(s) for _, s in mesh_cfg]
  if len(set(names)) != len(names):
    raise ValueError(f"mesh axis names repeat: {names}")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {tuple(mesh_cfg)}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {tuple(mesh_cfg)}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh {tuple(mesh_cfg)}: {num_devices} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(names, sizes))} has {math.prod(sizes)} devices but "
                     f"{num_devices} are available")
  return names, tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  names, sizes = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def batch_axes(mesh: jax.sharding.Mesh, rules) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over (those of the "batch" rule present in the mesh)."""
  axes = dict(rules)["batch"]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple(a for a in axes if a in mesh.shape)


def batch_size_divisor(mesh, rules) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def process_batch_problem(axis_names: Sequence[str], processes: np.ndarray,
                          axes: Sequence[str]) -> Optional[str]:
  """Why processes cannot each feed their own share of a batch split over mesh axes `axes`, or
  None when they can.

  `processes[i, j, ...]`: the process owning the mesh's device at that position (axes in the
  order `axis_names`). Every host reads batch / process_count examples of its own share and hands
  them to `jax.make_array_from_process_local_data`, so the batch shards must partition over the
  processes: no shard on two processes. Where a mesh axis the batch is not split over (e.g.
  "model") spans processes, two hosts hold the same rows yet feed different examples, and the
  "replicated" batch (and everything computed from it) silently differs between them.
  """
  processes = np.asarray(processes)
  if processes.ndim != len(axis_names):
    raise ValueError(f"{processes.ndim}-d process array for mesh axes {tuple(axis_names)}")
  batch = [list(axis_names).index(a) for a in axes if a in axis_names]  # major to minor
  rest = [i for i in range(len(axis_names)) if i not in batch]
  # one row per batch shard (in the order of the batch's rows), one column per other position
  per_shard = np.transpose(processes, batch + rest).reshape(
      math.prod(processes.shape[i] for i in batch), -1)
  n_proc = len(np.unique(processes))
  for shard, procs in enumerate(per_shard):
    shared = np.unique(procs).tolist()
    if len(shared) > 1:
      sizes = dict(zip(axis_names, processes.shape))
      spans = [a for a in axis_names if a not in axes and sizes[a] > 1]
      names = shared if len(shared) <= 4 else [*shared[:3], "...", shared[-1]]
      return (f"mesh {sizes} on {n_proc} processes: batch shard {shard} of {len(per_shard)} (the "
              f"batch is split over {list(axes)}) lies on processes {names}, which would feed "
              f"different examples into the same rows; keep {spans} within a process (inner "
              f"axes whose product divides the {processes.size // n_proc} devices per process), "
              f"so that the batch axes' product is a multiple of {n_proc}")
  return None


def _process_of(device) -> int:
  return device.process_index


def check_process_batches(mesh: jax.sharding.Mesh, rules) -> None:
  """ValueError (`process_batch_problem`) unless every process holds its own rows of a batch."""
  procs = np.vectorize(_process_of, otypes=[int])(mesh.devices)
  problem = process_batch_problem(tuple(mesh.axis_names), procs, batch_axes(mesh, rules))
  if problem:
    raise ValueError(problem)


def batch_sharding(mesh, rules) -> NamedSharding:
  """Sharding of a [B, ...] input: dimension 0 over the "batch" rule's mesh axes."""
  return NamedSharding(mesh, P(batch_axes(mesh, rules) or None))


def shards_of(sharding: NamedSharding) -> int:
  """Number of distinct pieces dimension 0 of an array with `sharding` is cut into."""
  spec = tuple(sharding.spec)
  axes = spec[0] if spec else None
  axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
  return math.prod(sharding.mesh.shape[a] for a in axes)


# ----- counts that do not divide the batch shards: pad, compute, drop the padding --------------
# A sample grid of 3 images or an eval batch of 6 on 8 batch shards is padded to 8 rows (static
# shapes, every shard equal); the padded rows carry valid=False and are dropped before anything is
# written or summed. Training batches are not padded (that would change the optimisation).
VALID = "valid"  # the batch key of the bool [B] mask of real rows


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` >= n."""
  return -(-int(n) // int(multiple)) * int(multiple)


def padded_size(what: str, n: int, shards: int, processes: Optional[int] = None, *,
                note: bool = False) -> int:
  """`n` rounded up to a multiple of the batch shards and of the process count (each host holds
  the same number of rows); with `note`, logs one line naming `what` when it pads. ValueError
  (naming `what`) if n < 1."""
  if n < 1:
    raise ValueError(f"{what}={n} must be >= 1")
  multiple = math.lcm(int(shards), int(jax.process_count() if processes is None else processes))
  padded = round_up(n, multiple)
  if note and padded != n:
    logging.info("%s=%d is not a multiple of the %d batch shards: computing %d rows, the %d "
                 "padding rows are dropped", what, n, multiple, padded, padded - n)
  return padded


def real_rows(n: int, padded: int) -> np.ndarray:
  """bool [padded]: True on the first n rows (the real ones of a globally padded batch)."""
  return np.arange(padded) < n


def to_host(tree):
  """A tree of (possibly batch-sharded, multi-host) arrays as whole numpy arrays on every process.

  On several processes this is a collective (`process_allgather`, tiled: every process must call
  it); on one it is `device_get`.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, jax.device_get(tree))


def host_rows(n: int, padded: int, process_index: Optional[int] = None,
              process_count: Optional[int] = None) -> tuple[int, int]:
  """(real rows, rows) of this host's part of a global batch of n real rows padded to `padded`
  (a multiple of the process count): every host holds padded / processes rows, of which the n
  real ones are shared as evenly as possible (hosts differ by at most one)."""
  i = jax.process_index() if process_index is None else process_index
  c = jax.process_count() if process_count is None else process_count
  if padded % c or padded < n:
    raise ValueError(f"{padded} rows cannot hold {n} real rows on {c} processes")
  return n * (i + 1) // c - n * i // c, padded // c


def pad_rows(batch: dict, rows: int, num_valid: Optional[int] = None) -> dict:
  """Host numpy batch with n <= rows rows -> `rows` rows plus VALID, True on the first
  `num_valid` (default n) rows.

  Padding rows repeat the first row (real data: no empty text, no all-zero statistics that
  could give NaN where a consumer forgets the mask); their results must be masked by VALID.
  A host whose share of the real rows is 0 reads one example and marks it padding (num_valid=0).
  """
  n = len(next(iter(batch.values())))
  if n > rows or n < 1:
    raise ValueError(f"a batch of {n} rows cannot be padded to {rows}")
  idx = np.where(np.arange(rows) < n, np.arange(rows), 0)
  out = {k: np.asarray(v)[idx] for k, v in batch.items()}
  out[VALID] = real_rows(n if num_valid is None else min(num_valid, n), rows)
  return out


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fit(spec: P, shape, mesh) -> P:
  """Drops mesh axes that do not divide their dimension (tiny or odd tensors stay replicated)."""
  out = []
  for i, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    group = (axes,) if isinstance(axes, str) else tuple(axes)
    group = tuple(a for a in group if a in mesh.shape)
    n = math.prod(mesh.shape[a] for a in group)
    out.append((group if len(group) > 1 else group[0]) if group and shape[i] % n == 0 else None)
  return P(*out)


def tree_shardings(abstract_boxed: Any, mesh, rules) -> Any:
  """Shardings for an (abstract, boxed) pytree; the result has the structure of the unboxed tree."""
  specs = nn.get_partition_spec(abstract_boxed)
  named = nn.logical_to_mesh_sharding(specs, mesh, rules)
  unboxed = nn.meta.unbox(abstract_boxed)
  return jax.tree.map(lambda s, a: NamedSharding(mesh, _fit(s.spec, a.shape, mesh)), named, unboxed,
                      is_leaf=lambda x: isinstance(x, NamedSharding))


def state_shardings(create_fn, *args, mesh, rules):
  """(abstract unboxed state, shardings) of `create_fn(*args)`, evaluated without allocation."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(create_fn, *args)
  shardings = tree_shardings(abstract, mesh, rules)
  unboxed = nn.meta.unbox(abstract)
  abstract_sharded = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, shardings)
  return abstract_sharded, shardings


def spec_summary(shardings) -> dict[str, int]:
  """Counts leaves per PartitionSpec string (for logs and tests)."""
  out: dict[str, int] = {}
  for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding)):
    out[str(s.spec)] = out.get(str(s.spec), 0) + 1
  return out
