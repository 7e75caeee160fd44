"""Name -> TFDS builder for our own datasets (shapes/*, emoji/*, image_folder/*); others use the
catalog.

A dataset already prepared in the data_dir is opened in the format it was written in (so a
TFRecord build is reported as such by `pipeline.require_random_access`, not as a TFDS error about
conflicting formats); one still to be built gets an array_record builder.
"""
import contextlib

from absl import logging

from maskvq_jax.data.builders.emoji import emoji
from maskvq_jax.data.builders.image_folder import image_folder
from maskvq_jax.data.builders.shapes import shapes

SHAPES_CONFIGS = tuple(c.name for c in shapes.Shapes.BUILDER_CONFIGS)
EMOJI_CONFIGS = tuple(c.name for c in emoji.Emoji.BUILDER_CONFIGS)
KNOWN = (tuple(f"shapes/{c}" for c in SHAPES_CONFIGS) + tuple(f"emoji/{c}" for c in EMOJI_CONFIGS)
         + ("image_folder/ffhq", "image_folder/<name>"))


def known_names() -> str:
  return ", ".join(KNOWN)


def is_ours(name: str) -> bool:
  return name.partition("/")[0] in ("shapes", "emoji", "image_folder")


@contextlib.contextmanager
def quiet_tfds():
  """Silences TFDS's builder-lookup warnings ("Using custom data configuration" for every folder,
  "no dataset_info.json" for one not built yet): nothing a user can act on."""
  old = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(old)


def is_prepared(b) -> bool:
  with quiet_tfds():
    return b.is_prepared()


def _open(make):
  """The prepared builder (in whatever format it was written), else an array_record one."""
  with quiet_tfds():
    b = make(None)
    return b if b.is_prepared() else make("array_record")


def catalog_builder(name: str, *, data_dir=None, file_format=None):
  """A TFDS catalog builder (imagenet2012, coco_captions, ...); ValueError for unknown names."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    with quiet_tfds():
      return tfds.builder(name, data_dir=data_dir or None,
                          **({"file_format": file_format} if file_format else {}))
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"unknown dataset {name!r}; known: {known_names()}, or a TFDS catalog name "
                     "(imagenet2012, coco_captions, ...)") from None


def builder(name: str, *, data_dir=None, folder: str = "", resize: int = 256):
  """A builder for our datasets; None for catalog names such as imagenet2012.

  Raises ValueError (naming the known ones) for an unknown shapes/*, emoji/* or image_folder/*
  config.
  """
  family, _, cfg = name.partition("/")
  kw = lambda fmt: {"data_dir": data_dir or None, **({"file_format": fmt} if fmt else {})}
  if family == "shapes":
    cfg = cfg or "32"
    if cfg not in SHAPES_CONFIGS:
      raise ValueError(f"unknown dataset {name!r}; known: {known_names()}")
    return _open(lambda fmt: shapes.Shapes(config=cfg, **kw(fmt)))
  if family == "emoji":
    cfg = cfg or "32"
    if cfg not in EMOJI_CONFIGS:
      raise ValueError(f"unknown dataset {name!r}; known: {known_names()}")
    return _open(lambda fmt: emoji.Emoji(config=cfg, **kw(fmt)))
  if family == "image_folder":
    cfg = cfg or "custom"
    if not cfg.replace("_", "").replace("-", "").isalnum():
      raise ValueError(f"dataset name {name!r}: image_folder/<name> takes letters, digits, _ "
                       "and - only")
    rule = "ffhq" if cfg == "ffhq" else "hash"
    config = image_folder.ImageFolderConfig(name=cfg, folder=folder, split_rule=rule,
                                            resize=resize)
    return _open(lambda fmt: image_folder.ImageFolder(config=config, **kw(fmt)))
  return None
