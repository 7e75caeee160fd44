"""Sharded, padded, exactly-once evaluation over every device of every host.

Why: evaluation sets rarely divide the global batch (50_000 FID samples, 49_999 after a corrupt
file, a 7-image test). Dropping the remainder biases metrics and silently changes N; padding
without a mask double-counts. Here (big_vision's `_mask` idiom):

  * each host feeds its own examples in host-local batches of `global_batch / process_count`;
  * the last batch is padded with zeros and every row carries its global example index, -1 for
    padding; hosts that run out early feed all-padding batches so every host runs the same
    number of steps (the collective jitted call needs that);
  * the jitted function sees a batch sharded over the data axis, with static shapes, so it
    compiles once;
  * outputs are gathered to every host (`process_allgather` on multi-host), padded rows are
    dropped on the host, and rows are sorted by example index, so the result is identical for
    any device count, host count or batch size.

`BatchRunner` keeps a couple of steps in flight before fetching results, so host-side batching
overlaps device compute.
"""
import collections
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from maskvq_jax.core import sharding as sharding_lib

INDEX = "_index"  # per-row global example index; -1 marks padding


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over all devices. `jax.sharding.Mesh` axes are Auto (not Explicit)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def host_range(n: int, process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> tuple[int, int]:
  """This host's contiguous [start, stop) share of n examples; shares differ by at most 1, none
  is dropped (unlike `split_for_jax_process(drop_remainder=True)`)."""
  i = jax.process_index() if process_index is None else process_index
  c = jax.process_count() if process_count is None else process_count
  return n * i // c, n * (i + 1) // c


def all_hosts(flag: bool) -> bool:
  """True iff `flag` holds on every host (a collective on multi-host; cheap). Use it for any
  decision that changes which collective passes run, e.g. "is the reference cache there?"."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.min(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


class BatchRunner:
  """Runs `fn(params, batch) -> {name: [B, ...]}` over host-local batches on a data mesh.

  Args:
    fn: a pure function of (params, batch dict of [B, ...] arrays) returning a dict of arrays
      whose leading dimension is the batch. The batch also holds "valid" (bool [B]) so `fn` can
      ignore padding if it reduces over rows (it should not: return per-row values instead).
    params: pytree passed to `fn`, replicated on every device (not baked into the program).
    global_batch_size: rows per step over all hosts; a multiple of the mesh's data size.
    mesh: default `data_mesh()`; `axes` names the mesh axes the batch is split over.
    in_flight: steps dispatched ahead of the host fetch.
  """

  def __init__(self, fn: Callable[[Any, dict], Mapping[str, Any]], params: Any, *,
               global_batch_size: int, mesh: Optional[jax.sharding.Mesh] = None,
               axes: tuple[str, ...] = ("data",), in_flight: int = 2):
    self.mesh = data_mesh() if mesh is None else mesh
    shards = int(np.prod([self.mesh.shape[a] for a in axes]))
    if (not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1
        or global_batch_size % shards or global_batch_size % jax.process_count()):
      raise ValueError(f"global_batch_size={global_batch_size!r} must be a positive multiple of "
                       f"the {shards} data shards (mesh {dict(self.mesh.shape)}) and of "
                       f"{jax.process_count()} processes")
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = self.global_batch_size // jax.process_count()
    self._in_flight = max(int(in_flight), 1)
    self._batch_sharding = NamedSharding(self.mesh, P(axes))
    self._params = jax.device_put(params, NamedSharding(self.mesh, P()))

    def wrapped(p, batch):
      batch = dict(batch)
      index = batch.pop(INDEX)
      batch["valid"] = index >= 0
      out = dict(fn(p, batch))
      if INDEX in out:
        raise ValueError(f"fn must not return the reserved key {INDEX!r}")
      out[INDEX] = index
      return out

    self._fn = jax.jit(wrapped, out_shardings=self._batch_sharding)

  def num_steps(self, num_local: int) -> int:
    """Steps every host runs: the maximum over hosts of ceil(local examples / local batch)."""
    steps = -(-int(num_local) // self.local_batch_size)
    if jax.process_count() > 1:
      steps = int(np.max(multihost_utils.process_allgather(np.asarray(steps, np.int32))))
    return steps

  def _pad(self, batch: Optional[dict], spec: Mapping[str, Any], start: int) -> dict:
    bs = self.local_batch_size
    n = 0 if batch is None else len(next(iter(batch.values())))
    if n > bs:
      raise ValueError(f"a host batch has {n} rows, more than the local batch size {bs}")
    out = {}
    for k, (shape, dtype) in spec.items():
      pad = np.zeros((bs - n,) + tuple(shape), dtype)
      out[k] = pad if batch is None else np.concatenate([np.asarray(batch[k], dtype), pad])
    index = np.full((bs,), -1, np.int32)
    index[:n] = np.arange(start, start + n)
    out[INDEX] = index
    return out

  def _fetch(self, out) -> dict:
    host = sharding_lib.to_host(out)
    keep = host[INDEX] >= 0
    return {k: v[keep] for k, v in host.items()}

  def run(self, host_batches: Iterable[Mapping[str, np.ndarray]], *, num_local: int,
          index_offset: int = 0, spec: Optional[Mapping[str, tuple]] = None,
          progress: Optional[Callable[[int], None]] = None) -> dict[str, np.ndarray]:
    """Evaluates every example exactly once; returns {name: [N_total, ...]} sorted by index.

    Args:
      host_batches: this host's examples in order, as dicts of numpy arrays with <= local
        batch size rows each (the last may be short). Must yield exactly `num_local` rows.
      num_local: number of examples on this host.
      index_offset: global index of this host's first example (see `host_range`).
      spec: {name: (per-example shape, dtype)}; needed only if this host has no examples,
        otherwise read off the first batch.
      progress: called with the number of this host's examples done after each step.

    Returns:
      Every output of `fn` for all hosts' examples plus "index" (global example index).
    """
    steps = self.num_steps(num_local)
    it = iter(host_batches)
    pending, parts, seen = collections.deque(), [], 0
    for _ in range(steps):
      batch = next(it, None) if seen < num_local else None
      if batch is not None and spec is None:
        spec = {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in batch.items()}
      if spec is None:
        raise ValueError("this host has no examples: pass `spec` so it can feed padding batches")
      local = self._pad(batch, spec, index_offset + seen)
      seen += 0 if batch is None else len(next(iter(batch.values())))
      arrays = {k: jax.make_array_from_process_local_data(self._batch_sharding, v)
                for k, v in local.items()}
      pending.append(self._fn(self._params, arrays))
      if len(pending) > self._in_flight:
        parts.append(self._fetch(pending.popleft()))
      if progress is not None:
        progress(seen)
    if seen != num_local or next(it, None) is not None:
      raise ValueError(f"host_batches did not yield exactly num_local={num_local} examples "
                       f"(got {seen} within {steps} steps of {self.local_batch_size}, or more)")
    parts.extend(self._fetch(p) for p in pending)
    if not parts:
      raise ValueError("nothing to evaluate: every host has 0 examples")
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged[INDEX], kind="stable")
    out = {k: v[order] for k, v in merged.items() if k != INDEX}
    out["index"] = merged[INDEX][order]
    return out


# ----- the FID InceptionV3 as a BatchRunner function ---------------------------------------------
def inception_pool3(inception_variables, images):
  """uint8 (or [0, 255] float) NHWC images of any size -> pool3 [B, 2048] (float32)."""
  from maskvq_jax.models import inception  # pylint: disable=import-outside-toplevel
  x = inception.to_inception_input(inception.resize_to_299(images))
  return inception.FIDInceptionV3().apply(inception_variables, x)


def pool3_fn(params, batch):
  """BatchRunner fn: params = inception variables, batch["image"] uint8 -> {"pool3"}."""
  return {"pool3": inception_pool3(params, batch["image"])}
