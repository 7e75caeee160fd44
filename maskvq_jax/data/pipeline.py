"""Input pipelines: TFDS/procedural sources -> grain -> global jax.Arrays (uint8 on the wire).

Why grain: random access plus a checkpointable iterator position, so a restarted run continues
with exactly the batch it would have seen (the position is saved with every checkpoint).
Each host reads its own part of the split (`tfds.split_for_jax_process`, or an index range for the
procedural source; evaluation: its rows of each global batch, the same examples for any process
count) and `jax.make_array_from_process_local_data` assembles the global batch with the same
sharding the model's "batch" axis uses. Images stay uint8 until the jitted step.

Augmentations follow the authors: ImageNet `crop_flip` (short-side resize + random crop + flip),
FFHQ `rrc_flip` (RandomResizedCrop scale 0.75-1, square, + flip), small procedural images `flip`.
Evaluation: short-side resize + centre crop. Images of any kind (16-bit, grey, palette, CMYK,
alpha over white, EXIF-rotated) are decoded by `data/images.py` into uint8 RGB; unreadable ones are
skipped and counted (`SKIPPED.value`), never fatal. A TFDS dataset prepared only as TFRecord is
refused when the pipeline is created, with the command that converts it.
"""
import collections
import io
import threading
from typing import Any, Iterator, Optional

from absl import logging
import grain
import jax
import numpy as np
from PIL import Image

from maskvq_jax.core import loop
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data import images
from maskvq_jax.data.builders.shapes import generate as shapes_gen


class _Counter:
  def __init__(self):
    self.value, self._lock = 0, threading.Lock()

  def add(self, n=1):
    with self._lock:
      self.value += n

  def reset(self):
    with self._lock:
      self.value = 0


SKIPPED = _Counter()  # corrupt / undecodable images seen by this process in the current run


# ------------------------------------------------------------------ sources
def _host_range(n: int) -> tuple[int, int]:
  per = n // jax.process_count()
  return jax.process_index() * per, (jax.process_index() + 1) * per


def get_source(inp, split: str, num_examples: Optional[int] = None, *, whole: bool = False):
  """Random-access source of this host's part of `split` for the `config.input` block; with
  `whole`, the whole split on every host (evaluation picks each host's rows, `eval_rows`)."""
  if inp.source == "procedural":
    if not inp.name.startswith("shapes"):
      raise ValueError(f"source=procedural only supports shapes, got {inp.name!r}")
    n = num_examples or inp.num_train_examples
    start, stop = (0, n) if whole else _host_range(n)
    return shapes_gen.ShapesSource(inp.res, n, seed=inp.get("data_seed", 0), split=split,
                                   start=start, stop=stop)
  if inp.source != "tfds":
    raise ValueError(f"unknown input.source {inp.source!r}; choose tfds or procedural")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # heavy, tfds only
  host_split = split if whole else tfds.split_for_jax_process(split, drop_remainder=True)
  return tfds_source(inp.name, host_split, data_dir=inp.data_dir, folder=inp.get("folder", ""))


class Rows:
  """The examples of a random-access source at `indices` (a random-access source itself)."""

  def __init__(self, src, indices):
    self.src, self.indices = src, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.src[int(self.indices[i])]


def tfds_source(name: str, split: str, *, data_dir: str = "", folder: str = ""):
  """Random-access TFDS source of `split` (images left encoded), for training and evaluation.

  Our datasets (shapes/*, emoji/*, image_folder/*) come from `data/builders`; shapes and emoji
  (from the installed font) are built on first use, folders must be built first. Catalog datasets must be prepared as ArrayRecord. Every refusal is a
  one-line ValueError / FileNotFoundError naming the dataset and what to run.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # heavy, tfds only
  from maskvq_jax.data import formats  # pylint: disable=g-import-not-at-top
  from maskvq_jax.data.builders import registry  # pylint: disable=g-import-not-at-top
  decoders = {"image": tfds.decode.SkipDecoding()}  # we decode (and skip corrupt files) ourselves
  b = registry.builder(name, data_dir=data_dir or None, folder=folder)
  if b is None:
    b = registry.catalog_builder(name, data_dir=data_dir or None)
    if not registry.is_prepared(b):
      raise FileNotFoundError(f"dataset {name} is not prepared in {b.data_dir_root}; build it "
                              f"as ArrayRecord: {formats.rebuild_command(name, b)} (see README)")
  elif not registry.is_prepared(b):
    if not name.startswith(("shapes", "emoji")):
      raise FileNotFoundError(f"{name} is not built in {b.data_dir_root}; run "
                              f"{formats.rebuild_command(name, b)}")
    logging.info("building %s into %s (offline)", name, b.data_dir)
    b.download_and_prepare()
  b = formats.random_access_builder(b, name)  # a TFRecord-only dataset: one line, with the fix
  return b.as_data_source(split=split, decoders=decoders)


# ------------------------------------------------------------------ preprocessing
def _decode(x) -> Optional[np.ndarray]:
  """uint8 RGB [H, W, 3] from encoded bytes or an array (`data/images.py`); None if undecodable."""
  try:
    if isinstance(x, np.ndarray) and x.ndim >= 2:
      return images.from_array(x)
    return images.decode(x)
  except Exception as e:  # pylint: disable=broad-except  # skip and count, never fatal
    SKIPPED.add()
    logging.warning("skipping an undecodable image (%s); %d skipped", e, SKIPPED.value)
    return None


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
  """Resizes HWC uint8 to (h, w) with PIL (bicubic, or nearest for masks)."""
  if a.shape[:2] == size:
    return a
  squeeze = a.shape[-1] == 1
  im = Image.fromarray(a[..., 0] if squeeze else a)
  out = np.asarray(im.resize((size[1], size[0]),
                             Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC))
  return out[..., None] if squeeze else out


def _short_side(a, res, nearest):
  h, w = a.shape[:2]
  s = res / min(h, w)
  return _resize(a, (max(res, round(h * s)), max(res, round(w * s))), nearest)


def _geometric(ex: dict, res: int, augment: str, rng: Optional[np.random.Generator]) -> dict:
  """Applies the same crop/flip to "image" and (if present) "mask"."""
  keys = [k for k in ("image", "mask") if k in ex]
  out = {k: ex[k] for k in keys}
  if augment == "rrc_flip" and rng is not None:
    h, w = out["image"].shape[:2]
    side = int(round(min(h, w) * np.sqrt(rng.uniform(0.75, 1.0))))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    out = {k: _resize(v[y:y + side, x:x + side], (res, res), k == "mask") for k, v in out.items()}
  else:
    out = {k: _short_side(v, res, k == "mask") for k, v in out.items()}
    h, w = out["image"].shape[:2]
    if augment == "crop_flip" and rng is not None:
      y, x = rng.integers(0, h - res + 1), rng.integers(0, w - res + 1)
    else:  # centre crop (eval, or augment="flip")
      y, x = (h - res) // 2, (w - res) // 2
    out = {k: v[y:y + res, x:x + res] for k, v in out.items()}
  if rng is not None and augment in ("crop_flip", "rrc_flip", "flip") and rng.random() < 0.5:
    out = {k: v[:, ::-1] for k, v in out.items()}
  return {k: np.ascontiguousarray(v, np.uint8) for k, v in out.items()}


def preprocess(ex: dict, rng: Optional[np.random.Generator], *, res: int, augment: str,
               keep_mask: bool) -> Optional[dict]:
  img = _decode(ex["image"])
  if img is None:
    return None
  ex = {"image": img, **({"mask": np.asarray(ex["mask"])} if keep_mask and "mask" in ex else {})}
  return _geometric(ex, res, augment if rng is not None else "none", rng)


# ------------------------------------------------------------------ iterators
class GlobalIterator:
  """Wraps a grain iterator of host-local numpy batches; yields global jax.Arrays.

  `prefetch` > 0 keeps that many further batches already put on the devices (the transfers are
  asynchronous, so they overlap the running step). `get_state`/`set_state` expose the grain
  position (JSON-serialisable) for checkpoints: the position of the next batch handed out, not of
  the batches waiting in the prefetch queue, so a resumed run continues with exactly that batch.
  """

  def __init__(self, host_iter, sharding, prefetch: int = 0):
    self._it, self._sharding = host_iter, sharding
    self._prefetch = max(int(prefetch), 0)
    self._queue = collections.deque()  # (grain state before the batch, device batch)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def _put(self, b):
    return {k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in b.items()}

  def __next__(self):
    if not self._prefetch:
      return self._put(next(self._it))
    while len(self._queue) < self._prefetch + 1:
      state = self._it.get_state()
      try:
        b = next(self._it)
      except StopIteration:
        break
      self._queue.append((state, self._put(b)))
    if not self._queue:
      raise StopIteration
    return self._queue.popleft()[1]

  def get_state(self) -> dict:
    return self._queue[0][0] if self._queue else self._it.get_state()

  def set_state(self, state: dict):
    self._queue.clear()
    self._it.set_state(state)


def restore_position(it, saved: dict):
  """Puts `it` (a GlobalIterator) where this process stood in a checkpoint's `data` item.

  `saved` is what `checkpointing.gather_process_states` wrote: every process's grain position.
  - Same process count: this process's own position, so the resumed run reads exactly the batches
    it would have read.
  - An older checkpoint with one position for all ({"next_index": ...}): that position, as before.
  - Another process count: each process now reads another share of the data, so no saved position
    is its own. The run keeps its place in the epoch: every process skips
    sum(saved next_index) / process_count examples of its new share, which is where a run with this
    many processes from the start would stand. The batches then differ from the uninterrupted run
    (a warning says so). A position without "next_index" cannot be mapped: the data start over.
  """
  if "processes" not in saved:  # one position for every process (checkpoints before per-process)
    it.set_state(saved)
    return
  states, n = saved["processes"], jax.process_count()
  if len(states) == n:
    it.set_state(states[jax.process_index()])
    return
  if all(isinstance(s, dict) and isinstance(s.get("next_index"), int) for s in states):
    total = sum(s["next_index"] for s in states)
    it.set_state(dict(states[0], next_index=total // n))
    logging.warning(
        "data position: the checkpoint was written by %d processes, this run has %d; each "
        "process's share of the data differs, so every process continues at example %d of its "
        "new share (%d examples read in all, divided by %d processes). The run keeps its place in "
        "the epoch, but its batches are not those an uninterrupted run would have read.",
        len(states), n, total // n, total, n)
    return
  logging.warning("data position: the checkpoint was written by %d processes, this run has %d, "
                  "and its positions (%s) cannot be mapped onto the new shares; the input starts "
                  "from the beginning of its order", len(states), n, states[0])


def _local_batch(global_bs: int) -> int:
  if global_bs % jax.process_count():
    raise ValueError(f"batch {global_bs} is not divisible by {jax.process_count()} processes")
  return global_bs // jax.process_count()


def train_iter(config, sharding) -> GlobalIterator:
  """Infinite, shuffled (per epoch), augmented, deterministic-from-seed training batches."""
  inp = config.input
  seed = int(config.seed) + int(inp.get("seed_offset", 0))
  src = get_source(inp, inp.split)
  pre = lambda ex, rng: preprocess(ex, rng, res=inp.res, augment=inp.augment, keep_mask=False)
  ds = (grain.MapDataset.source(src).seed(seed).shuffle().repeat().random_map(pre)
        .to_iter_dataset(grain.ReadOptions(num_threads=inp.num_threads,
                                           prefetch_buffer_size=max(inp.prefetch, 1) * 8))
        .batch(_local_batch(inp.batch_size), drop_remainder=True))
  return GlobalIterator(iter(ds), sharding, prefetch=loop.device_prefetch(inp))


def eval_rows(config, sharding, num_total: int) -> tuple[int, int, int, np.ndarray]:
  """(batches, real rows per host batch, rows per host batch, this host's example indices) of
  the held-out evaluation over a split of `num_total` examples that every host can read.

  `eval.batch_size` need not divide the batch shards or the hosts: each global batch holds
  eval.batch_size real examples, padded up to a multiple of the shards (`VALID` marks the real
  rows; the eval steps sum over them only). Global batch j holds examples j * B .. (j + 1) * B - 1
  (B = eval.batch_size) and host h its rows B * h // P .. of them (P processes), so the evaluated
  examples are the first (num_examples // B) * B whatever the process count: an evaluation curve
  does not jump when a run resumes on another number of hosts. A host without real rows reads
  one example per batch and marks it padding.
  """
  ev = config.eval
  b = int(ev.batch_size)
  padded = sharding_lib.padded_size("eval.batch_size", b, sharding_lib.shards_of(sharding))
  real, rows = sharding_lib.host_rows(b, padded)
  n = min(num_total, max(int(ev.num_examples), 0)) // b
  start = b * jax.process_index() // jax.process_count()
  idx = np.arange(n)[:, None] * b + start + np.arange(max(real, 1))[None, :]
  return n, real, rows, idx.reshape(-1)


def eval_iter(config, sharding) -> tuple[GlobalIterator, int]:
  """(iterator, number of batches) over the held-out split: fixed order, no augmentation.

  Batches carry "mask" (object masks) when the dataset has them (procedural shapes), and VALID
  (bool [B], False on the padding rows of `eval_rows`).
  """
  inp, ev = config.input, config.eval
  src = get_source(inp, ev.split, num_examples=ev.num_examples, whole=True)
  n_batches, real, rows, idx = eval_rows(config, sharding, len(src))
  if n_batches < 1:
    raise ValueError(f"eval split {ev.split!r} has {len(src)} examples (eval.num_examples="
                     f"{ev.num_examples}), fewer than one batch of {ev.batch_size}")
  pre = lambda ex: preprocess(ex, None, res=inp.res, augment="none", keep_mask=True)
  ds = (grain.MapDataset.source(Rows(src, idx)).map(pre)
        .to_iter_dataset(grain.ReadOptions(num_threads=inp.num_threads, prefetch_buffer_size=8))
        .batch(max(real, 1), drop_remainder=True)
        .map(lambda b: sharding_lib.pad_rows(b, rows, num_valid=real)))
  return GlobalIterator(iter(ds), sharding), n_batches
