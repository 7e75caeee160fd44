"""Datasets and input pipeline: procedural determinism, TFDS builders, grain position, corrupt files."""
import io
import os

import jax
import numpy as np
from PIL import Image
import pytest

from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data.builders.shapes import generate
from stage1_testlib import tiny  # tests/ is on sys.path


def test_procedural_examples_are_deterministic_and_consistent():
  a = generate.make_example(0, 5, 32)
  b = generate.make_example(0, 5, 32)
  c = generate.make_example(0, 6, 32)
  d = generate.make_example(1, 5, 32)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["caption"] == b["caption"]
  assert not np.array_equal(a["image"], c["image"]) and not np.array_equal(a["image"], d["image"])
  assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
  assert a["mask"].shape == (32, 32, 1) and set(np.unique(a["mask"])) <= {0, 1}
  assert 0 < a["mask"].mean() < 0.6
  assert a["label"] == a["shape"] * len(generate.COLORS) + a["colour"]
  shape, colour = generate.SHAPES[a["shape"]], list(generate.COLORS)[a["colour"]]
  assert f"{colour} {shape} on " in a["caption"]
  # The object is drawn in its colour: mean object pixel is close to the palette colour.
  obj = a["image"][a["mask"][..., 0] == 1].mean(0)
  assert np.abs(obj - np.array(generate.COLORS[colour])).max() < 40
  # Validation examples differ from train examples with the same index.
  v = generate.make_example(0, 5, 32, "validation")
  assert not np.array_equal(a["image"], v["image"])


def test_shapes_tfds_builder_matches_generator(tmp_path):
  from maskvq_jax.data.builders.shapes import shapes
  cfg = shapes.ShapesConfig(name="r16_test", res=16, num_train=12, num_validation=4, seed=3)
  b = shapes.Shapes(config=cfg, data_dir=str(tmp_path), file_format="array_record")
  b.download_and_prepare()
  src = b.as_data_source(split="train")
  assert len(src) == 12 and len(b.as_data_source(split="validation")) == 4
  ex = src[7]
  ref = generate.make_example(3, 7, 16)
  np.testing.assert_array_equal(ex["image"], ref["image"])
  np.testing.assert_array_equal(ex["mask"], ref["mask"])
  caption = ex["caption"].decode() if isinstance(ex["caption"], bytes) else ex["caption"]
  assert (int(ex["label"]), caption) == (ref["label"], ref["caption"])


def _batches(it, n):
  return [np.asarray(next(it)["image"]) for _ in range(n)]


def test_train_iterator_is_deterministic_and_resumable():
  c = tiny()
  mesh = sharding_lib.make_mesh(c.mesh)
  sh = sharding_lib.batch_sharding(mesh, sharding_lib.get_rules(c.sharding_rules))
  it = input_pipeline.train_iter(c, sh)
  first = _batches(it, 2)
  state = it.get_state()
  rest = _batches(it, 2)
  again = input_pipeline.train_iter(c, sh)
  for x, y in zip(first, _batches(again, 2)):
    np.testing.assert_array_equal(x, y)
  resumed = input_pipeline.train_iter(c, sh)
  resumed.set_state(state)
  for x, y in zip(rest, _batches(resumed, 2)):
    np.testing.assert_array_equal(x, y)
  b = next(it)["image"]
  assert b.shape == (8, 16, 16, 3) and b.dtype == np.uint8
  assert len(b.sharding.device_set) == 8  # the batch is split over all devices
  other = input_pipeline.train_iter(tiny(seed=1), sh)
  assert not np.array_equal(first[0], np.asarray(next(other)["image"]))


def test_eval_iterator_carries_object_masks():
  c = tiny()
  mesh = sharding_lib.make_mesh(c.mesh)
  sh = sharding_lib.batch_sharding(mesh, sharding_lib.get_rules(c.sharding_rules))
  it, n = input_pipeline.eval_iter(c, sh)
  assert n == 2
  b = next(it)
  assert b["image"].shape == (8, 16, 16, 3) and b["mask"].shape == (8, 16, 16, 1)


@pytest.mark.parametrize("augment", ["crop_flip", "rrc_flip", "flip", "none"])
def test_augmentations_keep_image_and_mask_aligned(augment):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
  mask = (img[..., :1] > 127).astype(np.uint8)
  out = input_pipeline.preprocess({"image": img, "mask": mask},
                                  None if augment == "none" else np.random.default_rng(1),
                                  res=32, augment=augment, keep_mask=True)
  assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32, 1)
  if augment in ("crop_flip", "none"):  # pure crops (after resize): the mask follows the image
    resized = input_pipeline._short_side(img, 32, False)
    rmask = input_pipeline._short_side(mask, 32, True)
    h, w = resized.shape[:2]
    hits = [(y, x, f) for y in range(h - 31) for x in range(w - 31) for f in (False, True)
            if np.array_equal((resized[y:y + 32, x:x + 32][:, ::-1] if f else
                               resized[y:y + 32, x:x + 32]), out["image"])]
    assert hits
    y, x, f = hits[0]
    m = rmask[y:y + 32, x:x + 32]
    np.testing.assert_array_equal(m[:, ::-1] if f else m, out["mask"])


def test_corrupt_images_are_skipped_and_counted(tmp_path):
  before = input_pipeline.SKIPPED.value
  good = io.BytesIO()
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(good, format="PNG")
  assert input_pipeline.preprocess({"image": good.getvalue()}, None, res=16, augment="none",
                                    keep_mask=False)["image"].shape == (16, 16, 3)
  assert input_pipeline.preprocess({"image": b"not an image"}, None, res=16, augment="none",
                                    keep_mask=False) is None
  assert input_pipeline.SKIPPED.value == before + 1

  from maskvq_jax.data.builders.image_folder import image_folder
  folder = tmp_path / "ffhq"
  folder.mkdir()
  for i in (0, 1, 59999, 60000, 60001):
    Image.fromarray(np.full((24, 24, 3), i % 255, np.uint8)).save(folder / f"{i:05d}.png")
  (folder / "00002.png").write_bytes(b"\x89PNG truncated")
  b = image_folder.ImageFolder(
      config=image_folder.ImageFolderConfig(name="ffhq", folder=str(folder), split_rule="ffhq",
                                            resize=16),
      data_dir=str(tmp_path / "tfds"), file_format="array_record")
  skipped = image_folder.ImageFolder.skipped
  b.download_and_prepare()
  assert image_folder.ImageFolder.skipped == skipped + 1
  train, val = b.as_data_source(split="train"), b.as_data_source(split="validation")
  assert (len(train), len(val)) == (3, 2)
  assert train[0]["image"].shape == (16, 16, 3)


class _Recorder:
  def __init__(self):
    self.states = []

  def set_state(self, state):
    self.states.append(state)


def test_restore_position_own_legacy_and_other_process_count(monkeypatch, caplog):
  from maskvq_jax.core import checkpointing  # pylint: disable=g-import-not-at-top
  saved = {"process_count": 2, "processes": [{"next_index": 8}, {"next_index": 12}]}
  with monkeypatch.context() as m:  # process 1 of 2: its own position
    m.setattr(jax, "process_count", lambda: 2)
    m.setattr(jax, "process_index", lambda: 1)
    r = _Recorder()
    input_pipeline.restore_position(r, saved)
    assert r.states == [{"next_index": 12}]
  r = _Recorder()  # a checkpoint from before per-process positions: used by every process
  input_pipeline.restore_position(r, {"next_index": 7})
  assert r.states == [{"next_index": 7}]
  for count, want in ((1, 20), (4, 5)):  # another count: the global position, shared out
    with monkeypatch.context() as m:
      m.setattr(jax, "process_count", lambda c=count: c)
      m.setattr(jax, "process_index", lambda: 0)
      r = _Recorder()
      caplog.clear()
      input_pipeline.restore_position(r, saved)
      assert r.states == [{"next_index": want}]
      assert f"written by 2 processes, this run has {count}" in caplog.text
  r = _Recorder()
  input_pipeline.restore_position(r, {"process_count": 2, "processes": [{"pos": 1}, {"pos": 2}]})
  assert r.states == [] and "cannot be mapped" in caplog.text
  assert checkpointing.gather_process_states({"next_index": 3}) == {
      "process_count": 1, "processes": [{"next_index": 3}]}


def test_position_from_two_processes_continues_where_one_process_would_be():
  """Two hosts that each read 2 local batches of 4 (next_index 8 each) -> one process continues at
  example 16 of its order: the batch a 1-process run reads after 2 global batches of 8."""
  c = tiny()
  sh = sharding_lib.batch_sharding(sharding_lib.make_mesh(c.mesh),
                                   sharding_lib.get_rules(c.sharding_rules))
  fresh = input_pipeline.train_iter(c, sh)
  _batches(fresh, 2)
  resumed = input_pipeline.train_iter(c, sh)
  input_pipeline.restore_position(
      resumed, {"process_count": 2, "processes": [{"next_index": 8}, {"next_index": 8}]})
  np.testing.assert_array_equal(_batches(resumed, 1)[0], _batches(fresh, 1)[0])
