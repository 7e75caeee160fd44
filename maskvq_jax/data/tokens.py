"""Stage-2 batches: images (+ labels / caption bytes) for on-the-fly tokens, or exported tokens.

Why a separate module: stage 1 only ever needs pixels, stage 2 also needs the condition (class id
or caption) and may skip the pixels entirely by reading tokens exported once with
`maskvq_jax.tools.export_tokens` (an ArrayRecord dataset: codes, positions, label, caption). Both
paths reuse stage 1's sources and augmentations (`input_pipeline.get_source` / `preprocess`), its
grain-position checkpointing and its global-array assembly, so a resumed stage-2 run sees exactly
the batch it would have seen.

Captions become fixed-length UTF-8 byte ids on the host (`text_encoder.tokenize_bytes`): strings
never reach the device. The procedural shapes source carries no caption string; its caption is
rebuilt from the example's shape / colour / size fields.
"""
import json
from typing import Optional

import grain
import numpy as np

from maskvq_jax.core import files
from maskvq_jax.core import loop
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.data.builders.shapes import generate as shapes_gen
from maskvq_jax.models import text_encoder

TOKENS_META = "tokens_meta.json"


# ------------------------------------------------------------------ conditions
def _lookup(ex: dict, key: str):
  """Nested feature lookup: "captions/text" -> ex["captions"]["text"]."""
  node = ex
  for part in key.split("/"):
    if not isinstance(node, dict) or part not in node:
      raise KeyError(f"feature {key!r} not found (example has {sorted(ex)})")
    node = node[part]
  return node


def _as_text(v) -> str:
  return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def caption_of(ex: dict, key: str, rng: Optional[np.random.Generator]) -> str:
  """One caption of an example: a string feature, or a random (first at eval) of a list."""
  if not key:
    if "shape" in ex and "colour" in ex and "size" in ex:  # procedural shapes
      return (f"a {list(shapes_gen.SIZES)[int(ex['size'])]} "
              f"{list(shapes_gen.COLORS)[int(ex['colour'])]} "
              f"{shapes_gen.SHAPES[int(ex['shape'])]}")
    raise ValueError("text model but input.caption_key is empty and the dataset is not shapes")
  v = _lookup(ex, key)
  if isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, (bytes, str)):
    v = list(np.asarray(v).reshape(-1))
    if not v:
      return ""
    v = v[int(rng.integers(len(v)))] if rng is not None else v[0]
  return _as_text(v)


def conditions(ex: dict, rng, *, need_label: bool, label_key: str, text_len: int) -> dict:
  out = {}
  if need_label:
    out["label"] = np.int32(_lookup(ex, label_key))
  if text_len > 0:
    ids, _ = text_encoder.tokenize_bytes([caption_of(ex, ex.get("_caption_key", ""), rng)],
                                         text_len)
    out["text_ids"] = ids[0]
  return out


# ------------------------------------------------------------------ exported tokens
def tokens_meta(tokens_dir: str) -> dict:
  path = files.join(tokens_dir, TOKENS_META)
  if not files.exists(path):
    raise FileNotFoundError(f"{tokens_dir} is not an exported token dataset (no {TOKENS_META}); "
                            "write one with python -m maskvq_jax.tools.export_tokens")
  return json.loads(files.read_text(path))


def token_files(tokens_dir: str, split: str) -> list[str]:
  """The split's ArrayRecord files (paths or URLs, as `tokens_dir` is given)."""
  meta = tokens_meta(tokens_dir)
  if split not in meta["splits"]:
    raise ValueError(f"split {split!r} not exported in {tokens_dir} (have {sorted(meta['splits'])})")
  paths = [files.join(tokens_dir, f) for f in meta["splits"][split]["files"]]
  missing = [f for f in paths if not files.exists(f)]
  if missing:
    raise FileNotFoundError(f"exported token files missing: {missing}")
  return paths


def decode_record(raw: bytes) -> dict:
  """One exported example: codes/positions int32 [K], label int32, caption str."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  ex = serialization.msgpack_restore(raw)
  return {"codes": np.asarray(ex["codes"], np.int32), "positions": np.asarray(ex["positions"], np.int32),
          "label": np.int32(ex.get("label", -1)), "caption": ex.get("caption", "")}


def encode_record(codes, positions, label: int = -1, caption: str = "") -> bytes:
  from flax import serialization  # pylint: disable=g-import-not-at-top
  return serialization.msgpack_serialize({
      "codes": np.asarray(codes, np.int16 if np.max(codes, initial=0) < 2**15 else np.int32),
      "positions": np.asarray(positions, np.int32), "label": int(label), "caption": caption})


class _TokenSource:
  """This host's share of an exported split (random access over ArrayRecord files).

  ArrayRecord reads local files only: files behind a URL (gs://...) are first copied to the local
  temp directory (`files.local_input`, once per process).
  """

  def __init__(self, paths: list[str], host_index: int, host_count: int):
    self._src = grain.sources.ArrayRecordDataSource([files.local_input(p) for p in paths])
    n = len(self._src) // host_count
    self._start, self._n = host_index * n, n

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return decode_record(self._src[self._start + int(i)])


# ------------------------------------------------------------------ iterators
def _source_and_prep(config, split, *, train, need_label, text_len, num_examples=None,
                     whole=False):
  """(source, prep); the source is this host's share of `split`, or with `whole` all of it."""
  import jax  # pylint: disable=g-import-not-at-top
  inp = config.input
  if inp.tokens_dir:
    host = (0, 1) if whole else (jax.process_index(), jax.process_count())
    src = _TokenSource(token_files(inp.tokens_dir, split), *host)

    def prep(ex, rng):
      out = {"codes": ex["codes"], "positions": ex["positions"]}
      if need_label:
        out["label"] = ex["label"]
      if text_len > 0:
        out["text_ids"] = text_encoder.tokenize_bytes([ex["caption"]], text_len)[0][0]
      del rng
      return out
    return src, prep

  src = input_pipeline.get_source(inp, split, num_examples=num_examples, whole=whole)

  def prep(ex, rng):
    rng = rng if train else None
    img = input_pipeline.preprocess(ex, rng, res=inp.res, augment=inp.augment, keep_mask=False)
    if img is None:
      return None
    ex = dict(ex, _caption_key=inp.caption_key)
    return {**img, **conditions(ex, rng, need_label=need_label, label_key=inp.label_key,
                                text_len=text_len)}
  return src, prep


def train_iter(config, sharding, *, need_label: bool, text_len: int):
  """Infinite shuffled batches: {"image" uint8 | "codes","positions"} + "label" / "text_ids"."""
  inp = config.input
  seed = int(config.seed) + int(inp.get("seed_offset", 0))
  src, prep = _source_and_prep(config, inp.split, train=True, need_label=need_label,
                               text_len=text_len)
  ds = (grain.MapDataset.source(src).seed(seed).shuffle().repeat().random_map(prep)
        .to_iter_dataset(grain.ReadOptions(num_threads=inp.num_threads,
                                           prefetch_buffer_size=max(inp.prefetch, 1) * 8))
        .batch(input_pipeline._local_batch(inp.batch_size), drop_remainder=True))  # pylint: disable=protected-access
  return input_pipeline.GlobalIterator(iter(ds), sharding, prefetch=loop.device_prefetch(inp))


def eval_iter(config, sharding, *, need_label: bool, text_len: int):
  """(iterator, batches): the held-out split in a fixed order, centre crops, first captions.

  Batches carry VALID (bool [B]): eval.batch_size real rows per global batch, padded up to the
  batch shards; the same examples for any process count (`pipeline.eval_rows`).
  """
  inp, ev = config.input, config.eval
  src, prep = _source_and_prep(config, ev.split, train=False, need_label=need_label,
                               text_len=text_len, num_examples=ev.num_examples, whole=True)
  n, real, rows, idx = input_pipeline.eval_rows(config, sharding, len(src))
  if n < 1:
    raise ValueError(f"eval split {ev.split!r}: {len(src)} examples, fewer than one batch of "
                     f"{ev.batch_size} (eval.num_examples={ev.num_examples})")
  ds = (grain.MapDataset.source(input_pipeline.Rows(src, idx)).map(lambda ex: prep(ex, None))
        .to_iter_dataset(grain.ReadOptions(num_threads=inp.num_threads, prefetch_buffer_size=8))
        .batch(max(real, 1), drop_remainder=True)
        .map(lambda b: sharding_lib.pad_rows(b, rows, num_valid=real)))
  return input_pipeline.GlobalIterator(iter(ds), sharding), n
