"""TFDS builder for the Noto Color Emoji images (array_record; offline once the font is installed).

  python -m maskvq_jax.data.build --name emoji/32      # also emoji/16, emoji/64
  ds = tfds.data_source("emoji/32", split="validation", data_dir=d)

What the images are, how the split and labels are made: `glyphs.py`. Smaller custom sets (tests):
`Emoji(config=EmojiConfig(name="r16_n40", res=16, max_examples=40), data_dir=d,
file_format="array_record")`, the first 40 glyphs of the font. The font's version and sha256 are
recorded in the dataset's metadata (`info.metadata`).
"""
import dataclasses

import tensorflow_datasets as tfds

from maskvq_jax.data.builders.emoji import glyphs as glyphs_lib


@dataclasses.dataclass
class EmojiConfig(tfds.core.BuilderConfig):
  res: int = 32
  validation_percent: float = 10.0
  max_examples: int = 0           # > 0: only the first N glyphs of the font (tests)
  font: str = ""                  # "" : $MASKVQ_EMOJI_FONT or the distributions' standard paths


class Emoji(tfds.core.GeneratorBasedBuilder):
  """Noto Color Emoji glyphs on white, square, with group / kind labels and the Unicode sequence."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [EmojiConfig(name="16", res=16), EmojiConfig(name="32", res=32),
                     EmojiConfig(name="64", res=64)]

  def _info(self):
    r = self.builder_config.res
    return tfds.core.DatasetInfo(
        builder=self,
        description=glyphs_lib.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 3)),
            "label": tfds.features.ClassLabel(names=list(glyphs_lib.GROUPS)),
            "kind": tfds.features.ClassLabel(names=list(glyphs_lib.KINDS)),
            "sequence": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
        homepage="https://github.com/googlefonts/noto-emoji",
        license="SIL Open Font License 1.1 (the font); images rendered from it",
        disable_shuffling=True,  # the font's glyph order
    )

  def glyph_splits(self) -> dict:
    """{"train": [Glyph], "validation": [Glyph]} of this config; FileNotFoundError without font."""
    c = self.builder_config
    table = glyphs_lib.glyph_table(glyphs_lib.find_font(c.font))
    if c.max_examples > 0:
      table = table[:c.max_examples]
    return glyphs_lib.plan_splits(table, c.validation_percent)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the font is a system package
    path = glyphs_lib.find_font(self.builder_config.font)
    self.info.metadata.update(glyphs_lib.font_info(path))
    return {k: self._generate_examples(v) for k, v in self.glyph_splits().items()}

  def _generate_examples(self, glyphs):
    res = self.builder_config.res
    for g in glyphs:
      yield g.key, {"image": glyphs_lib.render(g, res), "label": glyphs_lib.group_of(g.sequence),
                    "kind": glyphs_lib.kind_of(g.sequence), "sequence": g.key}
