"""Reference (real-image) Inception statistics and features of a dataset split, cached on disk.

Why cache: the real side of FID / precision-recall is the same for every checkpoint of an
ablation; recomputing 50k Inception passes per evaluation wastes most of the time. The cache key
names the dataset, split, resolution, example count (and procedural seed) plus the Inception
weights' sha1 and the resize policy version, so a change of any of them recomputes.

Files, in `<cache>/fid_stats/` (cache = `--stats_cache` (local or gs://), $MASKVQ_CACHE or
~/.cache/maskvq_jax):
  <key>.npz        standard FID statistics (`mu`, `sigma`, float64) + `meta/*` provenance;
  <key>.pool3.npy  the pool3 features [N, 2048] float32 (kept for precision/recall).
Only process 0 writes; every process computes (the passes are collective).
"""
import io
import os
from typing import Callable, Optional, Union

import jax
import numpy as np

from maskvq_jax.evaluation import data
from maskvq_jax.evaluation import features
from maskvq_jax.evaluation import fid
from maskvq_jax.core import files
from maskvq_jax.core.progress import Progress

RESIZE_POLICY = "bilinear-antialias-f32-v1"  # models.inception.resize_to_299


def cache_paths(spec: data.DatasetSpec, cache_dir: Optional[str] = None) -> tuple[str, str]:
  from maskvq_jax.tools import fetch_weights  # pylint: disable=import-outside-toplevel
  cache_dir = cache_dir or files.cache_root()
  if files.is_remote(cache_dir):  # e.g. a bucket shared by all hosts of a pod
    root = files.join(cache_dir, "fid_stats")
  else:  # local: created on first use
    root = files.join(os.fspath(fetch_weights.cache_dir(cache_dir)), "fid_stats")
  base = files.join(root, f"{spec.key()}_inc{fetch_weights.INCEPTION_SHA1[:8]}")
  return base + ".npz", base + ".pool3.npy"


def _load_npy(path: str) -> np.ndarray:
  with files.open(path, "rb") as f:
    return np.load(f)


def store(spec: data.DatasetSpec, pool3: np.ndarray, cache_dir: Optional[str] = None) -> str:
  """Writes statistics (+ features) of `pool3` to the cache (process 0). Returns the .npz path."""
  from maskvq_jax.tools import fetch_weights  # pylint: disable=import-outside-toplevel
  stats_path, feat_path = cache_paths(spec, cache_dir)
  if jax.process_index() == 0:
    mu, sigma = fid.statistics(pool3)
    fid.save_statistics(stats_path, mu, sigma, meta={
        "dataset": spec.name, "split": spec.split, "source": spec.source, "res": spec.res,
        "num_examples": int(pool3.shape[0]), "inception_sha1": fetch_weights.INCEPTION_SHA1,
        "resize": RESIZE_POLICY})
    buf = io.BytesIO()
    np.save(buf, np.asarray(pool3, np.float32))
    files.write_bytes(feat_path, buf.getvalue())
  return stats_path


def compute_pool3(source, total: int, inception_variables, *, global_batch_size: int,
                  res: Optional[int], name: str, mesh=None) -> np.ndarray:
  """pool3 [total, 2048] of every example of a random-access source (sharded, exactly once)."""
  runner = features.BatchRunner(features.pool3_fn, inception_variables,
                                global_batch_size=global_batch_size, mesh=mesh)
  shard = data.host_shard(source, total, runner.local_batch_size, res=res, keep_mask=False)
  out = runner.run(shard.batches(), num_local=shard.num_local, index_offset=shard.start,
                   progress=Progress(name, shard.num_local))
  return out["pool3"]


def reference(spec: data.DatasetSpec, inception_variables, *, need_features: bool,
              global_batch_size: Union[int, Callable[[int], int]], cache_dir: Optional[str] = None, mesh=None,
              refresh: bool = False) -> dict:
  """{"mu", "sigma", "pool3" (or None), "path", "cached", "num_examples"} for the split, from
  the cache when possible (features are loaded when needed, or when the set is small)."""
  stats_path, feat_path = cache_paths(spec, cache_dir)
  have_stats, have_feats = files.isfile(stats_path), files.isfile(feat_path)
  # Every host must take the same branch (the compute branch is collective): with a per-host
  # cache only host 0 ever writes, so on pods point --stats_cache at a shared directory.
  if features.all_hosts(not refresh and have_stats and (have_feats or not need_features)):
    mu, sigma = fid.load_statistics(stats_path)
    # Small sets: load the features too, so FID can take the cheap low-rank route.
    count = int(fid.load_meta(stats_path).get("num_examples", -1))
    small = 0 <= count < mu.shape[0]
    pool3 = _load_npy(feat_path) if need_features or (small and have_feats) else None
    return {"mu": mu, "sigma": sigma, "pool3": pool3, "path": stats_path, "cached": True,
            "num_examples": count}
  src, n = data.dataset_source(spec)
  if callable(global_batch_size):  # e.g. capped by the split size, known only now
    global_batch_size = global_batch_size(n)
  pool3 = compute_pool3(src, n, inception_variables, global_batch_size=global_batch_size,
                        res=spec.res, name=f"reference {spec.name}:{spec.split}", mesh=mesh)
  store(spec, pool3, cache_dir)
  mu, sigma = fid.statistics(pool3)
  return {"mu": mu, "sigma": sigma, "pool3": pool3, "path": stats_path, "cached": False,
          "num_examples": int(pool3.shape[0])}
