"""Image folders (local or gs://...) -> TFDS array_record, for FFHQ and any folder of images.

Why a builder instead of `tfds.ImageFolder`: that one only serves tf.data, while grain needs
random access (array_record). Images are decoded by `data/images.py` (16-bit, grey, palette,
CMYK, alpha over white, EXIF orientation -> uint8 RGB), short-side resized (optional) and stored
as PNG, so the training pipeline decodes small files. Unreadable files are skipped and counted,
never fatal. The folder may be local or a URL (gs://...).

Splits (`plan_splits`, deterministic, computed before anything is written):
  * "ffhq": taming's split by file number: 00000-59999 train, 60000-69999 validation.
  * "hash": any folder; a stable hash of the relative path sends `validation_percent` % to
    validation. A folder too small for that to pick any image still gets one validation image
    (the readable one with the smallest hash); neither split is ever empty: a folder that cannot
    fill both (one image, or an FFHQ folder without 60000+) is a one-line error naming the folder,
    its image count and the split sizes.

  b = ImageFolder(config=ImageFolderConfig(name="ffhq", folder="/data/ffhq", split_rule="ffhq"),
                  data_dir=d, file_format="array_record"); b.download_and_prepare()
"""
import dataclasses
import hashlib

from absl import logging
from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from maskvq_jax.data import images

EXTENSIONS = images.EXTENSIONS
SMALL_SPLIT = 8  # splits this small are test-decoded while planning (one readable file needed)


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  folder: str = ""
  split_rule: str = "hash"        # "ffhq" | "hash"
  validation_percent: float = 2.0
  resize: int = 256               # short side after resize; 0 keeps the original size


def _rel(path: epath.Path, root: epath.Path) -> str:
  return str(path.relative_to(root))


def list_images(folder: str) -> list[str]:
  """Image files under `folder` (recursively), sorted; local paths or URLs."""
  root = epath.Path(folder)
  out = []
  for d, _, names in root.walk():
    out += [str(d / n) for n in names if images.is_image_name(n)]
  return sorted(out)


def _hash(rel: str) -> int:
  return int(hashlib.md5(rel.encode()).hexdigest()[:8], 16) % 10000


def split_of(path: str, folder: str, rule: str, validation_percent: float) -> str:
  rel = _rel(epath.Path(path), epath.Path(folder))
  if rule == "ffhq":
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if not stem.isdigit():
      raise ValueError(f"image_folder/ffhq splits by file number (00000.png ... 69999.png), but "
                       f"{folder} holds {rel!r}; use image_folder/<another name> to split by hash")
    return "train" if int(stem) < 60000 else "validation"
  if rule == "hash":
    return "validation" if _hash(rel) < validation_percent * 100 else "train"
  raise ValueError(f"unknown split_rule {rule!r}; choose ffhq or hash")


def _readable(path: str) -> bool:
  try:
    images.read(path)
    return True
  except Exception as e:  # pylint: disable=broad-except  # any decode failure means unreadable
    logging.warning("unreadable image %s (%s)", path, e)
    return False


def _has_readable(files: list[str]) -> bool:
  """Whether a split can yield an example; only small splits are test-decoded (cheap)."""
  return len(files) > SMALL_SPLIT or any(_readable(f) for f in files)


def plan_splits(c: ImageFolderConfig) -> dict[str, list[str]]:
  """{"train": files, "validation": files}, both non-empty; ValueError (one line) otherwise.

  Writes nothing, so a refused folder leaves no trace in the data_dir.
  """
  if not c.folder:
    raise ValueError("image_folder datasets need the image directory: pass --folder DIR")
  root = epath.Path(c.folder)
  if not root.exists():
    raise ValueError(f"image folder {c.folder} does not exist")
  if not root.is_dir():
    raise ValueError(f"image folder {c.folder} is not a directory")
  files = list_images(c.folder)
  if not files:
    raise ValueError(f"image folder {c.folder} holds no images ({' '.join(EXTENSIONS)}, "
                     "searched recursively)")
  split = {"train": [], "validation": []}
  for f in files:
    split[split_of(f, c.folder, c.split_rule, c.validation_percent)].append(f)
  if c.split_rule == "hash" and not _has_readable(split["validation"]) and len(split["train"]) > 1:
    by_hash = sorted(split["train"], key=lambda f: (_hash(_rel(epath.Path(f), root)), f))
    pick = next((f for f in by_hash if _readable(f)), None)
    if pick is not None:
      split["train"].remove(pick)
      split["validation"].append(pick)
      logging.info("image folder %s: %d images, none readable hashed to validation; using %s",
                   c.folder, len(files), pick)
  if not _has_readable(split["train"]) or not _has_readable(split["validation"]):
    raise ValueError(
        f"image folder {c.folder}: {len(files)} image(s) give {len(split['train'])} train / "
        f"{len(split['validation'])} validation; both splits need at least one readable image"
        + (" (ffhq: 00000-59999 train, 60000-69999 validation)" if c.split_rule == "ffhq" else ""))
  return split


def load_image(path: str, resize: int):
  """uint8 RGB [H, W, 3] of `path`, short side resized (bicubic) to `resize` unless 0."""
  a = images.read(path)
  if resize:
    h, w = a.shape[:2]
    s = resize / min(w, h)
    if s != 1:
      im = Image.fromarray(a).resize((max(resize, round(w * s)), max(resize, round(h * s))),
                                     Image.Resampling.BICUBIC)
      a = images.from_array(im)
  return a


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Images of a local folder (RGB PNG) with their relative file name."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # No predefined configs: every build passes an ImageFolderConfig (the folder is only known then).

  skipped: int = 0

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "filename": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {k: self._generate_examples(v, k)
            for k, v in plan_splits(self.builder_config).items()}

  def _generate_examples(self, files, split):
    c = self.builder_config
    root = epath.Path(c.folder)
    yielded = 0
    for f in files:
      try:
        image = load_image(f, c.resize)
      except Exception as e:  # pylint: disable=broad-except  # corrupt files are skipped, not fatal
        type(self).skipped += 1
        logging.warning("skipping unreadable image %s (%s); %d skipped so far", f, e,
                        type(self).skipped)
        continue
      rel = _rel(epath.Path(f), root)
      yielded += 1
      yield rel, {"image": image, "filename": rel}
    if not yielded:  # instead of TFDS's "No examples were yielded"
      raise ValueError(f"image folder {c.folder}: none of the {len(files)} {split} images could "
                       "be read (see the warnings above)")
