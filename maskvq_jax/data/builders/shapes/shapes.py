"""TFDS builder for the procedural shapes dataset (array_record; offline; deterministic).

  from maskvq_jax.data.builders.shapes import shapes
  b = shapes.Shapes(config="32", data_dir=d, file_format="array_record"); b.download_and_prepare()
  ds = tfds.data_source("shapes/32", split="train", data_dir=d)

Custom sizes: `shapes.Shapes(config=shapes.ShapesConfig(name="r16_n64", res=16, num_train=64,
num_validation=16, seed=0), ...)`.
"""
import dataclasses

import tensorflow_datasets as tfds

from maskvq_jax.data.builders.shapes import generate


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  res: int = 32
  num_train: int = 50_000
  num_validation: int = 2_000
  seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
  """One object (6 shapes x 8 colours x 3 sizes) on plain/gradient backgrounds, with mask + caption."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="32", res=32),
      ShapesConfig(name="64", res=64),
      ShapesConfig(name="256", res=256, num_train=20_000, num_validation=1_000),
  ]

  def _info(self):
    r = self.builder_config.res
    return tfds.core.DatasetInfo(
        builder=self,
        description=generate.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 3)),
            "mask": tfds.features.Image(shape=(r, r, 1)),
            "label": tfds.features.ClassLabel(num_classes=generate.NUM_CLASSES),
            "shape": tfds.features.ClassLabel(names=list(generate.SHAPES)),
            "colour": tfds.features.ClassLabel(names=list(generate.COLORS)),
            "size": tfds.features.ClassLabel(names=list(generate.SIZES)),
            "background": tfds.features.ClassLabel(names=list(generate.BACKGROUNDS)),
            "caption": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # example i is make_example(seed, i): same order as ShapesSource
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples("train", c.num_train),
            "validation": self._generate_examples("validation", c.num_validation)}

  def _generate_examples(self, split, n):
    c = self.builder_config
    for i in range(n):
      yield i, generate.make_example(c.seed, i, c.res, split)
