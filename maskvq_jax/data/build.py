r"""Builds the offline datasets into a TFDS data_dir (array_record).

  python -m maskvq_jax.data.build --name shapes/32 --data_dir ~/tensorflow_datasets
  python -m maskvq_jax.data.build --name image_folder/ffhq --folder /data/ffhq/images1024x1024
  python -m maskvq_jax.data.build --name image_folder/custom --folder /data/my_images

A mistake in the flags is one `error:` line (exit 2), reported before TFDS is imported.
"""
from absl import flags

from maskvq_jax.core import cli

_NAME = flags.DEFINE_string("name", "shapes/32", "shapes/<32|64|256> or image_folder/<ffhq|custom>.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets).")
_FOLDER = flags.DEFINE_string("folder", "", "Image folder (image_folder/* only).")
_RESIZE = flags.DEFINE_integer("resize", 256, "Short side stored by image_folder/* (0: keep).")

SHAPES_CONFIGS = ("32", "64", "256")  # data/builders/shapes/shapes.py BUILDER_CONFIGS


def check_flags(name: str, folder: str, resize: int) -> None:
  """The flag checks that need no TFDS; UserError names the flag."""
  family, _, cfg = name.partition("/")
  if family == "shapes":
    if cfg and cfg not in SHAPES_CONFIGS:
      raise cli.UserError(f"--name={name!r}: expected shapes/<{'|'.join(SHAPES_CONFIGS)}>")
  elif family == "image_folder":
    if not folder:
      raise cli.UserError(f"--name={name!r} needs --folder (the folder of images)")
    from etils import epath  # pylint: disable=g-import-not-at-top  # local or gs:// folders
    if not epath.Path(folder).is_dir():
      raise cli.UserError(f"--folder={folder!r}: no such directory")
  else:
    raise cli.UserError(f"--name={name!r}: expected shapes/<{'|'.join(SHAPES_CONFIGS)}> or "
                        "image_folder/<ffhq|custom|any name>")
  if resize < 0:
    raise cli.UserError(f"--resize={resize}: expected an int >= 0 (0 keeps the size)")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  check_flags(_NAME.value, _FOLDER.value, _RESIZE.value)
  from maskvq_jax.data.builders import registry  # pylint: disable=g-import-not-at-top  # TFDS
  with cli.user_input():  # checks of the name and the folder
    b = registry.builder(_NAME.value, data_dir=_DATA_DIR.value, folder=_FOLDER.value,
                         resize=_RESIZE.value)
  b.download_and_prepare()
  print(b.info)


if __name__ == "__main__":
  cli.run_absl(main)
