"""The Noto Color Emoji dataset: glyph table, pixels (against Pillow's own drawing), deterministic
split that keeps skin tones together, a small build written identically twice, and the one-line
error when the font is not installed.

Needs the font (`apt-get install fonts-noto-color-emoji`): without it these tests skip, naming
the command, unless MASKVQ_REQUIRE_EMOJI_FONT=1 (CI, see .ci/run) makes that a failure.
"""
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import pytest

from maskvq_jax.data import build
from maskvq_jax.data import images
from maskvq_jax.data.builders.emoji import emoji
from maskvq_jax.data.builders.emoji import glyphs as glyphs_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = 40


@pytest.fixture(scope="module")
def font():
  try:
    return glyphs_lib.find_font()
  except FileNotFoundError as e:
    if os.environ.get("MASKVQ_REQUIRE_EMOJI_FONT", "0") != "0":
      pytest.fail(str(e))
    pytest.skip(f"{e} (tests of the emoji dataset)")


@pytest.fixture(scope="module")
def table(font):
  return glyphs_lib.glyph_table(font)


def test_every_colour_glyph_is_keyed_by_a_distinct_sequence(table):
  assert len(table) > 3000
  keys = [g.key for g in table]
  assert len(set(keys)) == len(keys)
  by_key = {g.key: g for g in table}
  # single code points, a keycap, a flag and a ZWJ family are all there, each with its own kind
  for key, kind, group in (("1F600", "single", "emoticons"), ("0031 20E3", "keycap", "other"),
                           ("1F1EB 1F1F7", "flag", "flags"),
                           ("1F468 200D 1F469 200D 1F467", "zwj", "pictographs"),
                           ("1F44D 1F3FD", "skin_tone", "pictographs")):
    g = by_key[key]
    assert (glyphs_lib.kind_of(g.sequence), glyphs_lib.group_of(g.sequence)) == (kind, group), key


def test_opaque_pixels_equal_what_pillow_draws(font, table):
  """The bitmap we decode is the one Pillow's text drawing uses (edges differ: Pillow blends
  onto a transparent canvas, we composite over white exactly)."""
  g = next(g for g in table if g.key == "1F600")
  ours = images.decode(g.png)
  im = Image.new("RGBA", (200, 200), (255, 255, 255, 0))
  ImageDraw.Draw(im).text((0, 0), chr(0x1F600), font=ImageFont.truetype(font, 109),
                          embedded_color=True)
  drawn = np.asarray(im.crop(im.getbbox()).convert("RGBA"))
  rgba = np.asarray(Image.open(io.BytesIO(g.png)).convert("RGBA"))
  ys, xs = np.nonzero(rgba[..., 3])
  crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
  assert drawn.shape[:2] == rgba[crop].shape[:2]
  opaque = rgba[crop][..., 3] == 255
  assert opaque.mean() > 0.5
  np.testing.assert_array_equal(drawn[..., :3][opaque], ours[crop][opaque])


def test_rendered_images_are_centred_squares_and_not_blank(table):
  for g in table[:SMALL]:
    a = glyphs_lib.render(g, 16)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    ink = (a < 240).any(-1)
    assert 0.05 < ink.mean() < 0.95, g.key
  full = glyphs_lib.render(table[0], 136)  # no resize: the bitmap over white, padded
  np.testing.assert_array_equal(full[4:132], images.decode(table[0].png))
  assert (full[:4] == 255).all() and (full[132:] == 255).all()


def test_split_is_a_stable_hash_that_keeps_skin_tones_together(table):
  assert glyphs_lib.split_hash((0x1F44D, 0x1F3FD)) == (
      int(hashlib.md5(b"1F44D").hexdigest()[:8], 16) % 10000)
  plan = glyphs_lib.plan_splits(table, 10.0)
  n_val = len(plan["validation"])
  assert 0.06 * len(table) < n_val < 0.14 * len(table)
  side = {}
  for name, gs in plan.items():
    for g in gs:
      side.setdefault(glyphs_lib.base_sequence(g.sequence), set()).add(name)
  assert all(len(s) == 1 for s in side.values())
  again = glyphs_lib.plan_splits(table, 10.0)
  assert [g.key for g in again["validation"]] == [g.key for g in plan["validation"]]
  if glyphs_lib.font_info(glyphs_lib.find_font())["font_revision"] == "2.042":  # Debian 12's
    assert (len(plan["train"]), n_val) == (3539, 387)  # what configs/repro_small.py was sized on


def test_a_subset_too_small_for_the_hash_still_gets_both_splits(table):
  few = table[:3]
  plan = glyphs_lib.plan_splits(few, 0.0)  # nothing hashes to validation at 0 %
  assert len(plan["validation"]) == 1 and len(plan["train"]) == 2
  with pytest.raises(ValueError, match="1 emoji give 1 train / 0 validation"):
    glyphs_lib.plan_splits(few[:1], 0.0)


def _build_small(data_dir):
  b = emoji.Emoji(config=emoji.EmojiConfig(name=f"r16_n{SMALL}", res=16, max_examples=SMALL),
                  data_dir=str(data_dir), file_format="array_record")
  b.download_and_prepare()
  return b


def test_small_build_is_deterministic_and_matches_the_rendering(tmp_path, table, font):
  b1, b2 = _build_small(tmp_path / "a"), _build_small(tmp_path / "b")
  plan = glyphs_lib.plan_splits(table[:SMALL], 10.0)
  for split in ("train", "validation"):
    f1 = sorted(p for p in os.listdir(b1.data_dir) if f"-{split}." in p)
    assert f1
    for name in f1:
      with open(os.path.join(b1.data_dir, name), "rb") as x, \
          open(os.path.join(b2.data_dir, name), "rb") as y:
        assert x.read() == y.read(), name
    src = b1.as_data_source(split=split)
    assert [src[i]["sequence"].decode() for i in range(len(src))] == [g.key for g in plan[split]]
    for i, g in enumerate(plan[split]):
      np.testing.assert_array_equal(src[i]["image"], glyphs_lib.render(g, 16))
      assert src[i]["label"] == glyphs_lib.GROUPS.index(glyphs_lib.group_of(g.sequence))
  assert len(b1.as_data_source(split="validation")) >= 1
  assert b1.info.metadata["font_sha256"] == glyphs_lib.font_info(font)["font_sha256"]


def test_missing_font_is_one_line_with_the_install_command(tmp_path, monkeypatch):
  monkeypatch.delenv(glyphs_lib.FONT_ENV, raising=False)
  monkeypatch.setattr(glyphs_lib, "FONT_PATHS", (str(tmp_path / "none.ttf"),))
  with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
    build.prepare("emoji/16", data_dir=str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds").exists()
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             MASKVQ_EMOJI_FONT=str(tmp_path / "none.ttf"))
  r = subprocess.run([sys.executable, "-m", "maskvq_jax.data.build", "--name", "emoji/16",
                      "--data_dir", str(tmp_path / "tfds")], capture_output=True, text=True,
                     env=env, timeout=300, cwd=ROOT)
  assert r.returncode == 2, r.stderr
  assert r.stderr.splitlines()[0] == (
      f"error: {glyphs_lib.FONT_ENV}={tmp_path / 'none.ttf'} does not exist; install it with "
      "`sudo apt-get install fonts-noto-color-emoji` (Debian/Ubuntu) or point "
      f"{glyphs_lib.FONT_ENV} at a NotoColorEmoji.ttf")
  assert "Traceback" not in r.stderr and r.stdout == ""
  assert not (tmp_path / "tfds").exists()
