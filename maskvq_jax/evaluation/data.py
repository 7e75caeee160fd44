"""Evaluation image sources: a dataset split, a folder of images, or .npz samples / shards.

Why not the training pipeline's `eval_iter`: it drops the remainder (whole batches only, equal
shares per host) because the trainer's periodic eval just needs a stable subset. Reported metrics
must instead see every example of the split exactly once, so here each host takes a contiguous,
non-dropping share (`features.host_range`) of a random-access source and yields batches whose last
one may be short; `features.BatchRunner` pads it and drops the padding again.

Preprocessing of dataset images reuses `input_pipeline.preprocess` (decode, short-side resize,
centre crop, object mask carried along), so evaluation sees exactly what the trainer's eval saw;
sample folders are decoded by the same `data/images.py`. Sample order is stable: folders in
natural path order (recursively), a sampling run's shards by sample index (gaps refused).
"""
import dataclasses
import json
import re
from typing import Any, Iterator, Optional

from etils import epath
import numpy as np

from maskvq_jax.core import files
from maskvq_jax.data import images
from maskvq_jax.evaluation import features

IMAGE_EXTENSIONS = images.EXTENSIONS


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Where evaluation images come from (a TFDS/procedural dataset split)."""
  name: str                        # TFDS name, "shapes/<cfg>" or "image_folder/<cfg>"
  split: str = "validation"
  source: str = "tfds"             # "tfds" or "procedural" (shapes generated on the fly)
  res: int = 256
  num_examples: int = -1           # -1: the whole split (required > 0 for procedural)
  data_dir: str = ""
  folder: str = ""
  data_seed: int = 0

  def key(self) -> str:
    """A filesystem-safe identifier (used for reference-statistics cache files)."""
    raw = f"{self.source}_{self.name}_{self.split}_r{self.res}_n{self.num_examples}"
    if self.source == "procedural":
      raw += f"_seed{self.data_seed}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)


class _Slice:
  """Random access to source[start:stop]."""

  def __init__(self, src, start: int, stop: int):
    self.src, self.start, self.stop = src, start, stop

  def __len__(self):
    return self.stop - self.start

  def __getitem__(self, i):
    return self.src[self.start + i]


def _hide_accelerators_from_tf():
  """TFDS imports TensorFlow; keep it off the GPUs/TPUs JAX is using."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except Exception:  # pylint: disable=broad-except  # TF absent, no such device type, or set
    pass


def dataset_source(spec: DatasetSpec):
  """(random-access source over the WHOLE split (or its first num_examples), its length)."""
  if spec.source == "procedural":
    if not spec.name.startswith("shapes"):
      raise ValueError(f"source=procedural only supports shapes datasets, got {spec.name!r}")
    if spec.num_examples <= 0:
      raise ValueError("source=procedural needs num_examples > 0 (the split is generated)")
    from maskvq_jax.data.builders.shapes import generate  # pylint: disable=import-outside-toplevel
    src = generate.ShapesSource(spec.res, spec.num_examples, seed=spec.data_seed, split=spec.split)
    return src, len(src)
  if spec.source != "tfds":
    raise ValueError(f"unknown dataset source {spec.source!r}; choose tfds or procedural")
  _hide_accelerators_from_tf()
  from maskvq_jax.data import pipeline  # pylint: disable=import-outside-toplevel  # heavy (tfds)
  src = pipeline.tfds_source(spec.name, spec.split, data_dir=spec.data_dir, folder=spec.folder)
  n = len(src) if spec.num_examples <= 0 else min(len(src), spec.num_examples)
  if n < 1:
    raise ValueError(f"{spec.name} split {spec.split!r} is empty")
  return src, n


def preprocess_example(ex: dict, res: int) -> dict:
  """Decode + centre crop (the trainer's eval preprocessing); raises on undecodable images."""
  from maskvq_jax.data import pipeline as input_pipeline  # pylint: disable=import-outside-toplevel
  out = input_pipeline.preprocess(ex, None, res=res, augment="none", keep_mask=True)
  if out is None:
    raise ValueError("an evaluation image cannot be decoded; metrics must see every example, "
                     "so fix or remove it from the split (see the warning above for details)")
  return out


# ----- samples -----------------------------------------------------------------------------------
class _ArraySource:
  def __init__(self, images: np.ndarray):
    self.images = images

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i]}


def natural_key(name: str) -> list:
  """Sort key that orders digit runs by value: img2.png before img10.png."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class _FolderSource:
  """Image files (decoded by `data/images.py`), all of one size."""

  def __init__(self, paths: list[str]):
    self.paths = paths
    first = self._load(0)
    self.shape = first.shape

  def _load(self, i):
    return images.read(self.paths[i])

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    a = self._load(i)
    if a.shape != self.shape:
      raise ValueError(f"sample {self.paths[i]} has shape {a.shape}, but {self.paths[0]} has "
                       f"{self.shape}: all samples must have one size")
    return {"image": a}


def _spans(values) -> str:
  """'3, 5-9, 12' for sorted ints (the first 5 runs)."""
  runs, out = [], []
  for v in values:
    if runs and v == runs[-1][1] + 1:
      runs[-1][1] = v
    else:
      runs.append([v, v])
  for a, b in runs[:5]:
    out.append(str(a) if a == b else f"{a}-{b}")
  return ", ".join(out) + (", ..." if len(runs) > 5 else "")


class _ShardsSource:
  """The `.npz` shards of one sampling run (`python -m maskvq_jax.sample --out DIR`), in global
  sample order (their "index" arrays; natural file-name order when a shard has none). Indices
  must run 0..N-1 without gaps or repeats, and N must match `sample_info.json` when present: a
  missing shard is an error, never a silently smaller set. Reads one shard at a time and keeps
  the last one, so a host's sequential pass loads each file once."""

  def __init__(self, paths: list[str], folder: str):
    self.paths, sizes, indices = paths, [], []
    for path in paths:
      with files.open(path, "rb") as fh, np.load(fh) as z:
        idx = np.asarray(z["index"]) if "index" in z.files else None
        sizes.append(len(idx) if idx is not None else len(_images_of(z, path)))
        indices.append(idx)
    if any(i is None for i in indices):  # not all from the sampling CLI: file order
      indices = list(np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1]))
    rows = sorted((int(g), f, r) for f, idx in enumerate(indices) for r, g in enumerate(idx))
    dup = [g for (g, _, _), (h, _, _) in zip(rows, rows[1:]) if g == h]
    if dup:
      raise ValueError(f"sample index {dup[0]} appears twice in the shards under "
                       f"{folder}: are two sampling runs in one folder?")
    have = {g for g, _, _ in rows}
    missing = [g for g in range(rows[-1][0] + 1) if g not in have] if rows else []
    if missing:
      raise ValueError(f"sample indices {_spans(missing)} are missing from the {len(paths)} "
                       f"shards under {folder} ({len(rows)} samples, highest index "
                       f"{rows[-1][0]}): a shard is missing or incomplete")
    info = epath.Path(folder) / "sample_info.json"
    if info.is_file():
      num = json.loads(info.read_text()).get("num")
      if num is not None and int(num) != len(rows):
        raise ValueError(f"{info} says {num} samples, but the {len(paths)} shards under "
                         f"{folder} hold {len(rows)}: a shard is missing")
    self.rows = [(f, r) for _, f, r in rows]
    self._cached = (-1, None)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    f, r = self.rows[i]
    if self._cached[0] != f:
      self._cached = (f, load_npz_images(self.paths[f]))
    return {"image": self._cached[1][r]}


def _images_of(z, path: str) -> np.ndarray:
  for k in ("images", "samples", "arr_0"):
    if k in z.files:
      return z[k]
  if len(z.files) != 1:
    raise ValueError(f"{path}: cannot tell which array holds the images; name it 'images' "
                     f"(found keys {sorted(z.files)})")
  return z[z.files[0]]


def load_npz_images(path: str) -> np.ndarray:
  """uint8 [N, H, W, 3] from an .npz (key "images", "samples", "arr_0", or its only array)."""
  with files.open(path, "rb") as f, np.load(f) as z:
    a = _images_of(z, path)
  if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
    raise ValueError(f"{path}: samples must be uint8 [N, H, W, 3], got {a.dtype} {a.shape}")
  return a


def list_image_files(folder: str) -> list[str]:
  """Image files under `folder` (recursively; local or gs://), in natural order of their
  relative paths (a/img2.png < a/img10.png < b/img1.png)."""
  root = epath.Path(folder)
  found = []
  for d, _, names in root.walk():  # etils' glob refuses "**" (it could list a whole bucket)
    found += [d / n for n in names if images.is_image_name(n)]
  return [str(p) for p in sorted(found, key=lambda p: natural_key(str(p.relative_to(root))))]


def samples_source(path: str, num: Optional[int] = None):
  """(random-access source of {"image": uint8 HWC}, N) for an image folder, a folder of .npz
  shards (the sampling CLI's --out: its PNG grids are then ignored) or one .npz file (local or
  gs://). Folder images are read recursively in natural path order, shards in sample-index order.
  `num`: only the first `num` samples in that order (an error if fewer exist)."""
  p = epath.Path(files.absolute(path))
  shards = (sorted((str(q) for q in p.glob("*.npz")), key=natural_key) if p.is_dir() else [])
  if shards:
    src = _ShardsSource(shards, str(p))
  elif p.is_dir():
    paths = list_image_files(str(p))
    if not paths:
      raise FileNotFoundError(f"--samples folder {path} holds no {' '.join(images.EXTENSIONS)} "
                              "images or .npz shards")
    src = _FolderSource(paths)
  elif p.is_file() and p.suffix == ".npz":
    src = _ArraySource(load_npz_images(str(p)))
  elif not p.exists():
    raise FileNotFoundError(f"--samples {path} does not exist")
  else:
    raise FileNotFoundError(f"--samples must be a folder of images or .npz shards, or an .npz "
                            f"file, got {path}")
  n = len(src)
  if num is None:
    return src, n
  if num < 1:
    raise ValueError(f"--num_samples={num} must be >= 1")
  if num > n:
    raise ValueError(f"--num_samples={num}, but --samples {path} holds only {n} samples")
  return _Slice(src, 0, num), num


def array_source(images: np.ndarray):
  """Random-access source over in-memory uint8 images [N, H, W, 3] (e.g. fresh samples)."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
  return _ArraySource(images), len(images)


# ----- host batches ------------------------------------------------------------------------------
@dataclasses.dataclass
class HostShard:
  """This host's part of a source: iterate `batches()`; `start` is its first global index."""
  source: Any
  total: int
  start: int
  stop: int
  local_batch_size: int
  res: Optional[int] = None  # dataset images: centre-crop/resize to res; None: use as is
  keep_mask: bool = True
  num_threads: int = 8

  @property
  def num_local(self) -> int:
    return self.stop - self.start

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    import grain  # pylint: disable=import-outside-toplevel
    res, keep_mask = self.res, self.keep_mask

    def pre(ex):
      out = preprocess_example(ex, res) if res is not None else {"image": np.asarray(ex["image"])}
      if not keep_mask:
        out.pop("mask", None)
      return out

    if self.num_local == 0:
      return iter(())
    ds = (grain.MapDataset.source(_Slice(self.source, self.start, self.stop)).map(pre)
          .to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                             prefetch_buffer_size=4 * self.local_batch_size))
          .batch(self.local_batch_size, drop_remainder=False))
    return iter(ds)


def host_shard(source, total: int, local_batch_size: int, **kwargs) -> HostShard:
  start, stop = features.host_range(total)
  return HostShard(source, total, start, stop, local_batch_size, **kwargs)

