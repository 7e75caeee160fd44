"""Building datasets: image folders of any size (deterministic, never an empty split), one-line
errors from `python -m maskvq_jax.data.build` that leave nothing behind, TFDS catalog names
written as ArrayRecord, and TFRecord-only datasets refused at pipeline creation with the fix."""
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from maskvq_jax.data import build
from maskvq_jax.data import formats
from maskvq_jax.data import pipeline
from maskvq_jax.data.builders import registry
from maskvq_jax.data.builders.image_folder import image_folder
from maskvq_jax.data.builders.shapes import generate
from maskvq_jax.data.builders.shapes import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(path, names, bad=()):
  path.mkdir(parents=True, exist_ok=True)
  for i, n in enumerate(names):
    if n in bad:
      (path / n).write_bytes(b"\x89PNG not really")
    else:
      Image.fromarray(np.full((10, 12, 3), 20 * i, np.uint8)).save(path / n)
  return path


def _config(folder, name="custom", rule="hash"):
  return image_folder.ImageFolderConfig(name=name, folder=str(folder), split_rule=rule, resize=0)


def _filenames(src):
  return sorted(src[i]["filename"].decode() for i in range(len(src)))


def test_ten_images_build_with_a_deterministic_split_and_no_empty_split(tmp_path):
  names = [f"img_{i}.png" for i in range(10)]
  folder = _folder(tmp_path / "ten", names)
  plan = image_folder.plan_splits(_config(folder))
  assert len(plan["validation"]) >= 1 and len(plan["train"]) + len(plan["validation"]) == 10
  copy = _folder(tmp_path / "elsewhere" / "ten", names)  # same relative names, other place
  again = image_folder.plan_splits(_config(copy))
  assert [os.path.basename(f) for f in again["validation"]] == [
      os.path.basename(f) for f in plan["validation"]]
  b = build.prepare("image_folder/ten", data_dir=str(tmp_path / "tfds"), folder=str(folder),
                    resize=0)
  val, train = b.as_data_source(split="validation"), b.as_data_source(split="train")
  assert _filenames(val) == sorted(os.path.basename(f) for f in plan["validation"])
  assert len(train) + len(val) == 10


@pytest.mark.parametrize("n", [2, 3])
def test_tiny_folders_get_one_validation_image(tmp_path, n):
  plan = image_folder.plan_splits(_config(_folder(tmp_path / "f", [f"{i}.png" for i in range(n)])))
  assert len(plan["validation"]) == 1 and len(plan["train"]) == n - 1


def test_folders_that_cannot_fill_both_splits_are_one_line_errors(tmp_path):
  one = _folder(tmp_path / "one", ["a.png"])
  with pytest.raises(ValueError) as e:
    image_folder.plan_splits(_config(one))
  assert str(e.value) == (f"image folder {one}: 1 image(s) give 1 train / 0 validation; both "
                          "splits need at least one readable image")
  two = _folder(tmp_path / "two", ["a.png", "b.png"], bad=("b.png",))
  with pytest.raises(ValueError, match=r"2 image\(s\) give 1 train / 1 validation; both splits "
                                       "need at least one readable image"):
    image_folder.plan_splits(_config(two))
  ffhq = _folder(tmp_path / "ffhq", ["00000.png", "00001.png", "59999.png"])
  with pytest.raises(ValueError, match=r"3 image\(s\) give 3 train / 0 validation; .* \(ffhq: "
                                       "00000-59999 train, 60000-69999 validation\\)"):
    image_folder.plan_splits(_config(ffhq, "ffhq", "ffhq"))
  _folder(ffhq, ["cover.png"])
  with pytest.raises(ValueError, match="image_folder/ffhq splits by file number .* holds "
                                       "'cover.png'"):
    image_folder.plan_splits(_config(ffhq, "ffhq", "ffhq"))


def test_unreadable_split_fails_in_one_line_and_leaves_no_directory(tmp_path):
  """Plan passes (large splits are not test-decoded), generation finds no readable train image."""
  names = [f"{i:02d}.png" for i in range(12)]
  folder = _folder(tmp_path / "bad", names, bad=names[1:])
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  with pytest.raises(ValueError, match=r"image folder .*bad: none of the 1[01] train images "
                                       "could be read"):
    build.prepare("image_folder/bad", data_dir=str(data_dir), folder=str(folder), resize=0)
  assert list(data_dir.iterdir()) == []


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "maskvq_jax.data.build", *args], capture_output=True,
                     text=True, env=env, timeout=300, cwd=ROOT)
  return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("case", ["unknown", "missing", "empty", "one", "no_folder"])
def test_cli_user_errors_are_one_line_and_write_nothing(tmp_path, case):
  (tmp_path / "empty").mkdir()
  _folder(tmp_path / "one", ["a.png"])
  data_dir = tmp_path / "new_data_dir"  # does not exist: must still not exist afterwards
  args = {"unknown": ["--name", "nope/1"],
          "missing": ["--name", "image_folder/x", "--folder", str(tmp_path / "missing")],
          "empty": ["--name", "image_folder/x", "--folder", str(tmp_path / "empty")],
          "one": ["--name", "image_folder/x", "--folder", str(tmp_path / "one")],
          "no_folder": ["--name", "image_folder/x"]}[case]
  want = {
      "unknown": "error: unknown dataset 'nope/1'; known: shapes/32, shapes/64, shapes/256, "
                 "emoji/16, emoji/32, emoji/64, image_folder/ffhq, image_folder/<name>, or a TFDS catalog name (imagenet2012, "
                 "coco_captions, ...)",
      "missing": f"error: image folder {tmp_path / 'missing'} does not exist",
      "empty": f"error: image folder {tmp_path / 'empty'} holds no images (.png .jpg .jpeg .webp "
               ".bmp .gif .tif .tiff, searched recursively)",
      "one": f"error: image folder {tmp_path / 'one'}: 1 image(s) give 1 train / 0 validation; "
             "both splits need at least one readable image",
      "no_folder": "error: image_folder datasets need the image directory: pass --folder DIR",
  }[case]
  rc, out, err = _cli(*args, "--data_dir", str(data_dir))
  assert rc == 2, err
  assert err.splitlines()[0] == want
  assert "Traceback" not in err and out == ""
  assert not data_dir.exists()


class TinyCatalog(tfds.core.GeneratorBasedBuilder):
  """A registered (catalog-style) dataset standing in for imagenet2012 / coco_captions."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "test"}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(4), "validation": self._generate_examples(2)}

  def _generate_examples(self, n):  # pylint: disable=arguments-differ
    for i in range(n):
      yield i, {"image": np.full((8, 8, 3), 10 * i, np.uint8), "label": i % 2}


class _TfrecordShapes(shapes.Shapes, skip_registration=True):
  """shapes/32 with 8 + 8 examples (same name and config, so it lands where shapes/32 goes)."""
  name = "shapes"
  BUILDER_CONFIGS = [shapes.ShapesConfig(name="32", res=32, num_train=8, num_validation=8)]


def _convert(version_dir, monkeypatch):
  """TFDS's own converter (`tfds convert_format`); its module needs apache_beam only to define
  a Beam class, so a stand-in is used when Beam is not installed (use_beam=False path)."""
  if importlib.util.find_spec("apache_beam") is None:
    fake = types.ModuleType("apache_beam")
    fake.DoFn, fake.Pipeline = object, object
    monkeypatch.setitem(sys.modules, "apache_beam", fake)
  cfu = importlib.import_module("tensorflow_datasets.scripts.cli.convert_format_utils")
  cfu.convert_dataset(out_dir=None, out_file_format="array_record",
                      dataset_version_dir=[version_dir], num_workers=1)


def test_tfrecord_only_dataset_is_refused_with_the_fix_then_converted_works(tmp_path,
                                                                            monkeypatch):
  from stage1_testlib import tiny  # pylint: disable=import-outside-toplevel
  from maskvq_jax.evaluation import data as eval_data  # pylint: disable=import-outside-toplevel
  d = str(tmp_path / "tfds")
  _TfrecordShapes(config="32", data_dir=d, file_format="tfrecord").download_and_prepare()
  version_dir = os.path.join(d, "shapes", "32", "1.0.0")
  want = (f"dataset shapes/32 in {version_dir} is stored as tfrecord only, but the input pipeline "
          "reads ArrayRecord (random access): rebuild it with `python -m maskvq_jax.data.build "
          f"--name shapes/32 --data_dir {d}` after moving {version_dir} away, or convert it in "
          f"place with `tfds convert_format --dataset_version_dir={version_dir} "
          "--out_file_format=array_record` (needs pip install apache-beam mlcroissant)")
  c = tiny()
  c.input.update(source="tfds", name="shapes/32", data_dir=d)
  with pytest.raises(ValueError) as e:  # pipeline creation, before any training step
    pipeline.train_iter(c, None)
  assert str(e.value) == want
  with pytest.raises(ValueError) as e:
    eval_data.dataset_source(eval_data.DatasetSpec(name="shapes/32", data_dir=d, res=32))
  assert str(e.value) == want
  with pytest.raises(ValueError) as e:
    build.prepare("shapes/32", data_dir=d)
  assert str(e.value) == want
  _convert(version_dir, monkeypatch)  # the fix the message names
  src = pipeline.tfds_source("shapes/32", "train", data_dir=d)
  assert len(src) == 8
  np.testing.assert_array_equal(pipeline.preprocess(src[5], None, res=32, augment="none",
                                                    keep_mask=False)["image"],
                                generate.make_example(0, 5, 32)["image"])


def test_catalog_dataset_is_built_as_array_record_and_tfrecord_copy_is_refused(tmp_path):
  d = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="dataset tiny_catalog is not prepared in .*; build "
                                              "it as ArrayRecord: python -m maskvq_jax.data.build "
                                              "--name tiny_catalog"):
    pipeline.tfds_source("tiny_catalog", "train", data_dir=d)
  b = build.prepare("tiny_catalog", data_dir=d)
  assert b.info.file_format.value == "array_record"
  src = pipeline.tfds_source("tiny_catalog", "validation", data_dir=d)
  first = pipeline.preprocess(src[1], None, res=8, augment="none", keep_mask=False)["image"]
  assert len(src) == 2 and (first == 10).all()
  other = str(tmp_path / "tfrecord")
  TinyCatalog(data_dir=other, file_format="tfrecord").download_and_prepare()
  with pytest.raises(ValueError, match=r"^dataset tiny_catalog in .* is stored as tfrecord only.*"
                                       "python -m maskvq_jax.data.build --name tiny_catalog "
                                       f"--data_dir {other}`"):
    pipeline.tfds_source("tiny_catalog", "train", data_dir=other)
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset_xyz'; known: shapes/32"):
    pipeline.tfds_source("no_such_dataset_xyz", "train", data_dir=d)
  assert formats.stored_formats(registry.catalog_builder("tiny_catalog", data_dir=other)) == [
      "tfrecord"]
