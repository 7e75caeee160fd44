r"""Builds datasets into a TFDS data_dir as ArrayRecord, the format the input pipeline reads.

  python -m maskvq_jax.data.build --name shapes/32 --data_dir ~/tensorflow_datasets
  python -m maskvq_jax.data.build --name emoji/32   # needs: apt-get install fonts-noto-color-emoji
  python -m maskvq_jax.data.build --name image_folder/ffhq --folder /data/ffhq/images1024x1024
  python -m maskvq_jax.data.build --name image_folder/custom --folder /data/my_images
  # TFDS catalog datasets, written as ArrayRecord (the `tfds` CLI of TFDS 4.9 needs apache-beam
  # and mlcroissant; this needs neither). ImageNet: the downloaded ILSVRC2012 tars in --manual_dir
  python -m maskvq_jax.data.build --name imagenet2012 --manual_dir /data/imagenet_tars
  python -m maskvq_jax.data.build --name coco_captions

User errors (unknown name, missing or empty folder, emoji font not installed, a folder too small for both splits, a dataset
already prepared as TFRecord) print `error: ...` and exit 2; a build that fails leaves no new
directory behind in the data_dir. Flag mistakes are reported before TFDS is imported.
"""
from absl import flags
from etils import epath

from maskvq_jax.core import cli

_NAME = flags.DEFINE_string("name", "shapes/32", "shapes/<32|64|256>, emoji/<16|32|64>, image_folder/<ffhq|name>, or "
                            "a TFDS catalog name (imagenet2012, coco_captions, ...).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets).")
_FOLDER = flags.DEFINE_string("folder", "", "Image folder (image_folder/* only).")
_RESIZE = flags.DEFINE_integer("resize", 256, "Short side stored by image_folder/* (0: keep).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Manually downloaded files (catalog datasets such as imagenet2012).")


def _missing_dirs(b) -> list[epath.Path]:
  """The directories a build would create that do not exist yet, deepest first."""
  root = epath.Path(b.data_dir_root)
  cands = [root / "downloads" / "extracted", root / "downloads"]
  d = epath.Path(b.data_dir)  # <root>/<name>/<config>/<version>
  while d != root and root in d.parents:
    cands.append(d)
    d = d.parent
  cands += [root] + list(root.parents)
  return [p for p in cands if not p.exists()]


def _remove_empty(dirs: list[epath.Path]):
  for d in dirs:  # deepest first; only directories this build created and left empty
    try:
      if d.is_dir() and not any(d.iterdir()):
        d.rmdir()
    except OSError:
      pass


def _check_manual_dir(name: str, b, manual_dir):
  """A dataset downloaded by hand (imagenet2012) needs its files before anything is written."""
  how = " ".join((getattr(b, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or "").split())
  if not how:
    return
  d = epath.Path(manual_dir) if manual_dir else epath.Path(b.data_dir_root) / "downloads" / "manual"
  if not d.is_dir() or not any(d.iterdir()):
    raise ValueError(f"{name} is built from files you download yourself: pass --manual_dir DIR "
                     f"({d} is missing or empty); TFDS says: {how}")


def prepare(name: str, *, data_dir=None, folder: str = "", resize: int = 256,
            manual_dir=None):
  """Builds `name` into data_dir as ArrayRecord (or finds it built); returns the builder.

  ValueError / FileNotFoundError (one line) on user errors.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from maskvq_jax.data import formats  # pylint: disable=g-import-not-at-top
  from maskvq_jax.data.builders import registry  # pylint: disable=g-import-not-at-top
  from maskvq_jax.data.builders.image_folder import image_folder  # pylint: disable=g-import-not-at-top
  if registry.is_ours(name):
    b = registry.builder(name, data_dir=data_dir, folder=folder, resize=resize)
  else:
    b = registry.catalog_builder(name, data_dir=data_dir)
  if registry.is_prepared(b):
    formats.random_access_builder(b, name)  # refuses one prepared as TFRecord only
    return b
  if not registry.is_ours(name):
    b = registry.catalog_builder(name, data_dir=data_dir, file_format="array_record")
    _check_manual_dir(name, b, manual_dir)
  elif name.startswith("image_folder"):
    image_folder.plan_splits(b.builder_config)  # refuses a bad folder before anything is written
  elif name.startswith("emoji"):
    b.glyph_splits()  # refuses a missing font (with the install command) before anything is written
  new = _missing_dirs(b)
  try:
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
                           if manual_dir else None)
  except BaseException:
    _remove_empty(new)
    raise
  return b


SHAPES_CONFIGS = ("32", "64", "256")  # data/builders/shapes/shapes.py BUILDER_CONFIGS


def check_flags(name: str, folder: str, resize: int) -> None:
  """The flag checks that need no TFDS; UserError names the flag."""
  family, _, cfg = name.partition("/")  # image_folder/* and catalog names: checked by prepare()
  if family == "shapes":
    if cfg and cfg not in SHAPES_CONFIGS:
      raise cli.UserError(f"--name={name!r}: expected shapes/<{'|'.join(SHAPES_CONFIGS)}>")
  if resize < 0:
    raise cli.UserError(f"--resize={resize}: expected an int >= 0 (0 keeps the size)")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  check_flags(_NAME.value, _FOLDER.value, _RESIZE.value)
  with cli.user_input(ValueError, FileNotFoundError):
    b = prepare(_NAME.value, data_dir=_DATA_DIR.value, folder=_FOLDER.value,
                resize=_RESIZE.value, manual_dir=_MANUAL_DIR.value)
  print(b.info)
  return 0


if __name__ == "__main__":
  cli.run_absl(main)
