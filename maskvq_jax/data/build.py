r"""Builds the offline datasets into a TFDS data_dir (array_record).

  python -m maskvq_jax.data.build --name shapes/32 --data_dir ~/tensorflow_datasets
  python -m maskvq_jax.data.build --name image_folder/ffhq --folder /data/ffhq/images1024x1024
  python -m maskvq_jax.data.build --name image_folder/custom --folder /data/my_images
"""
from absl import app
from absl import flags

from maskvq_jax.data.builders import registry

_NAME = flags.DEFINE_string("name", "shapes/32", "shapes/<32|64|256> or image_folder/<ffhq|custom>.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets).")
_FOLDER = flags.DEFINE_string("folder", "", "Image folder (image_folder/* only).")
_RESIZE = flags.DEFINE_integer("resize", 256, "Short side stored by image_folder/* (0: keep).")


def main(argv):
  del argv
  b = registry.builder(_NAME.value, data_dir=_DATA_DIR.value, folder=_FOLDER.value,
                       resize=_RESIZE.value)
  b.download_and_prepare()
  print(b.info)


if __name__ == "__main__":
  app.run(main)
