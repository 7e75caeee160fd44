"""Image folders (local or gs://...) -> TFDS array_record, for FFHQ and any folder of images.

Why a builder instead of `tfds.ImageFolder`: that one only serves tf.data, while grain needs
random access (array_record). Images are re-encoded as PNG after an optional short-side resize so
the training pipeline decodes small files. Unreadable files are skipped and counted, never fatal.

Splits:
  * "ffhq": taming's split by file number: 00000-59999 train, 60000-69999 validation.
  * "hash": any folder; a stable hash of the relative path sends `validation_percent` % to
    validation.

  b = ImageFolder(config=ImageFolderConfig(name="ffhq", folder="/data/ffhq", split_rule="ffhq"),
                  data_dir=d, file_format="array_record"); b.download_and_prepare()
"""
import dataclasses
import hashlib
import io

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from maskvq_jax.core import files

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  folder: str = ""
  split_rule: str = "hash"        # "ffhq" | "hash"
  validation_percent: float = 2.0
  resize: int = 256               # short side after resize; 0 keeps the original size


def list_images(folder: str) -> list[str]:
  return [f for f in files.glob(folder, "*", recursive=True) if f.lower().endswith(EXTENSIONS)]


def split_of(path: str, folder: str, rule: str, validation_percent: float) -> str:
  rel = files.relative_to(path, folder)
  if rule == "ffhq":
    stem = files.basename(path).rsplit(".", 1)[0]
    return "train" if int(stem) < 60000 else "validation"
  if rule == "hash":
    h = int(hashlib.md5(rel.encode()).hexdigest()[:8], 16) % 10000
    return "validation" if h < validation_percent * 100 else "train"
  raise ValueError(f"unknown split_rule {rule!r}")


def load_png(path: str, resize: int) -> bytes:
  """Reads, converts to RGB, short-side resizes (bicubic) and PNG-encodes; raises if unreadable."""
  with files.open(path, "rb") as f, Image.open(f) as im:
    im = im.convert("RGB")
    if resize:
      w, h = im.size
      s = resize / min(w, h)
      if s != 1:
        im = im.resize((max(resize, round(w * s)), max(resize, round(h * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
  return buf.getvalue()


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
    c = self.builder_config
    if not c.folder or not files.isdir(c.folder):
      raise ValueError(f"image folder {c.folder!r} does not exist (set ImageFolderConfig.folder)")
    by_split = {"train": [], "validation": []}
    for f in list_images(c.folder):
      by_split[split_of(f, c.folder, c.split_rule, c.validation_percent)].append(f)
    return {k: self._generate_examples(v) for k, v in by_split.items()}

  def _generate_examples(self, paths):
    c = self.builder_config
    for f in paths:
      try:
        data = load_png(f, c.resize)
      except Exception as e:  # pylint: disable=broad-except  # corrupt files are skipped, not fatal
        type(self).skipped += 1
        logging.warning("skipping unreadable image %s (%s); %d skipped so far", f, e,
                        type(self).skipped)
        continue
      rel = files.relative_to(f, c.folder)
      yield rel, {"image": np.asarray(Image.open(io.BytesIO(data))), "filename": rel}
