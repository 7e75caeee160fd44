"""The one image decoder (`data/images.py`) on every kind of file, and its use by the folder
builder, the input pipeline and the evaluator's folder source: expected pixel values computed
independently (integer formulas, hand-written PNG chunks), not by PIL's own conversions."""
import io
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from maskvq_jax.data import images
from maskvq_jax.data import pipeline


def _encode(im: Image.Image, fmt="PNG", **kw) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kw)
  return buf.getvalue()


def _png16(a: np.ndarray, colour_type: int) -> bytes:
  """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): 0 grey, 2 RGB, 4 LA, 6 RGBA."""
  h, w = a.shape[:2]
  chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d
                        + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
  raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type,
                                                            0, 0, 0))
          + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


RAMP16 = np.array([0, 1, 128, 129, 256, 257, 385, 386, 32767, 32768, 65278, 65279, 65534, 65535]
                  + list(range(0, 65536, 4681)), np.uint16)


def _expected16(v):
  return np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey_ramp_maps_to_rounded_8bit(fmt):
  a = np.tile(RAMP16, (3, 1))
  out = images.decode(_encode(Image.fromarray(a), fmt))  # PIL mode I;16
  assert out.shape == a.shape + (3,) and out.dtype == np.uint8
  want = _expected16(a)
  for ch in range(3):
    np.testing.assert_array_equal(out[..., ch], want)
  assert (out == 255).mean() < 0.2  # was 99.6 % white (every value above 255 clipped)
  np.testing.assert_array_equal(images.decode(_png16(a, 0)), np.repeat(want[..., None], 3, -1))
  np.testing.assert_array_equal(images.from_array(a)[..., 1], want)
  np.testing.assert_array_equal(images.from_array(a.astype(">u2")[..., None])[..., 2], want)


def test_16bit_colour_and_alpha_pngs():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 65536, (4, 5, 3)).astype(np.uint16)
  out = images.decode(_png16(rgb, 2))
  assert out.shape == (4, 5, 3)
  assert np.abs(out.astype(int) - _expected16(rgb)).max() <= 1  # PIL keeps the high byte
  rgba = np.concatenate([rgb, np.full((4, 5, 1), 65535, np.uint16)], -1)
  rgba[0, 0] = [65535, 0, 0, 0]  # fully transparent red -> background
  out = images.decode(_png16(rgba, 6))
  assert tuple(out[0, 0]) == images.BACKGROUND
  assert np.abs(out[1:].astype(int) - _expected16(rgb[1:])).max() <= 1
  la = np.stack([np.full((2, 2), 65535, np.uint16), np.zeros((2, 2), np.uint16)], -1)
  assert (images.decode(_png16(la, 4)) == 255).all()  # white, fully transparent -> white


def test_alpha_is_composited_on_the_documented_background():
  assert images.BACKGROUND == (255, 255, 255)
  px = np.array([[[255, 0, 0, 128], [0, 200, 0, 0], [10, 20, 30, 255], [100, 50, 0, 64]]],
                np.uint8)
  out = images.decode(_encode(Image.fromarray(px, "RGBA")))
  c, a = px[..., :3].astype(float), px[..., 3:].astype(float) / 255
  want = np.floor(c * a + 255 * (1 - a) + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(out, want)
  assert tuple(out[0, 0]) == (255, 127, 127)  # half-transparent red over white
  assert tuple(out[0, 1]) == (255, 255, 255)  # transparent green is not green
  la = np.array([[[0, 128], [200, 255]]], np.uint8)
  out = images.decode(_encode(Image.fromarray(la, "LA")))
  np.testing.assert_array_equal(out[0, :, 0], [127, 200])
  np.testing.assert_array_equal(images.from_array(px), want)


def test_grey_palette_and_cmyk():
  g = np.array([[0, 77, 255]], np.uint8)
  np.testing.assert_array_equal(images.decode(_encode(Image.fromarray(g))), np.stack([g] * 3, -1))
  bits = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
  np.testing.assert_array_equal(images.decode(_encode(bits))[0], [[0, 0, 0], [255, 255, 255]])
  p = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
  p.putpalette([255, 0, 0, 0, 0, 255, 0, 128, 0])
  np.testing.assert_array_equal(images.decode(_encode(p))[0], [[255, 0, 0], [0, 0, 255],
                                                               [0, 128, 0]])
  for fmt in ("PNG", "GIF"):
    out = images.decode(_encode(p, fmt, transparency=1))[0]
    np.testing.assert_array_equal(out, [[255, 0, 0], [255, 255, 255], [0, 128, 0]])
  key = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))
  np.testing.assert_array_equal(images.decode(_encode(key, transparency=(4, 5, 6)))[0],
                                [[1, 2, 3], [255, 255, 255]])
  cmyk = Image.frombytes("CMYK", (3, 1), bytes([0, 255, 0, 0, 0, 0, 0, 255, 0, 0, 0, 0]))
  np.testing.assert_array_equal(images.decode(_encode(cmyk, "TIFF"))[0],
                                [[255, 0, 255], [0, 0, 0], [255, 255, 255]])
  with pytest.raises(ValueError, match="mode F"):
    images.decode(_encode(Image.fromarray(np.zeros((2, 2), np.float32)), "TIFF"))


@pytest.mark.parametrize("orientation,turn", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(orientation, turn):
  a = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  exif = Image.Exif()
  exif[0x0112] = orientation
  out = images.decode(_encode(Image.fromarray(a), exif=exif.tobytes()))
  np.testing.assert_array_equal(out, np.rot90(a, turn))  # 6: 90 deg clockwise -> [6, 4, 3]


def test_pipeline_and_evaluator_decode_like_the_decoder(tmp_path):
  rgba = np.zeros((20, 20, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 255, 128
  data = _encode(Image.fromarray(rgba, "RGBA"))
  out = pipeline.preprocess({"image": data}, None, res=20, augment="none", keep_mask=False)
  np.testing.assert_array_equal(out["image"], images.decode(data))
  assert tuple(out["image"][5, 5]) == (255, 127, 127)
  ramp = np.tile(RAMP16[:20], (20, 1))
  out = pipeline.preprocess({"image": _encode(Image.fromarray(ramp))}, None, res=20,
                            augment="none", keep_mask=False)
  np.testing.assert_array_equal(out["image"][..., 0], _expected16(ramp))
  from maskvq_jax.evaluation import data as eval_data  # pylint: disable=import-outside-toplevel
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "a.png").write_bytes(data)
  src, n = eval_data.samples_source(str(tmp_path / "s"))
  assert n == 1 and tuple(src[0]["image"][0, 0]) == (255, 127, 127)


def _kinds() -> dict[str, bytes]:
  """One file of each kind, all of different sizes (w x h), by name."""
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (18, 30, 3), dtype=np.uint8)
  rgba = np.concatenate([rng.integers(0, 256, (26, 22, 3), dtype=np.uint8),
                         rng.integers(0, 256, (26, 22, 1), dtype=np.uint8)], -1)
  p = Image.fromarray(rng.integers(0, 4, (17, 17), dtype=np.uint8), "P")
  p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
  exif = Image.Exif()
  exif[0x0112] = 6
  return {
      "rgb.png": _encode(Image.fromarray(rgb)),
      "grey16.png": _encode(Image.fromarray(rng.integers(0, 65536, (20, 24), dtype=np.uint16))),
      "rgb16.png": _png16(rng.integers(0, 65536, (16, 19, 3)).astype(np.uint16), 2),
      "rgba.png": _encode(Image.fromarray(rgba, "RGBA")),
      "la.png": _encode(Image.fromarray(rgba[..., [0, 3]], "LA")),
      "palette.gif": _encode(p, "GIF", transparency=3),
      "cmyk.tif": _encode(Image.fromarray(rgb).convert("CMYK"), "TIFF"),
      "rotated.png": _encode(Image.fromarray(rgb), exif=exif.tobytes()),
      "grey.bmp": _encode(Image.fromarray(rgb[..., 0]), "BMP"),
  }


def test_folder_builder_stores_what_the_decoder_gives_and_pipeline_crops_mixed_sizes(tmp_path):
  """Every kind of file through the builder (no resize): the stored image is the decoder's
  output; through the training pipeline every mixed-size image becomes res x res."""
  from maskvq_jax.data.builders import registry  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "mixed"
  (folder / "sub").mkdir(parents=True)
  kinds = _kinds()
  for name, data in kinds.items():
    (folder / ("sub" if name.startswith("r") else "") / name).write_bytes(data)
  b = registry.builder("image_folder/mixed", data_dir=str(tmp_path / "tfds"), folder=str(folder),
                       resize=0)
  b.download_and_prepare()
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  seen = {}
  for split in ("train", "validation"):
    src = b.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    for i in range(len(src)):
      ex = src[i]
      name = ex["filename"].decode() if isinstance(ex["filename"], bytes) else ex["filename"]
      seen[name.split("/")[-1]] = pipeline._decode(ex["image"])  # pylint: disable=protected-access
  assert sorted(seen) == sorted(kinds)
  for name, data in kinds.items():
    np.testing.assert_array_equal(seen[name], images.decode(data), err_msg=name)
  assert seen["rotated.png"].shape == (30, 18, 3)
  for name, img in seen.items():
    out = pipeline.preprocess({"image": img}, np.random.default_rng(0), res=16,
                              augment="rrc_flip", keep_mask=False)
    assert out["image"].shape == (16, 16, 3), name
    out = pipeline.preprocess({"image": img}, None, res=16, augment="none", keep_mask=False)
    assert out["image"].shape == (16, 16, 3), name

  b2 = registry.builder("image_folder/mixed16", data_dir=str(tmp_path / "tfds"),
                        folder=str(folder), resize=16)
  b2.download_and_prepare()
  shapes = [b2.as_data_source(split=s)[i]["image"].shape for s in ("train", "validation")
            for i in range(len(b2.as_data_source(split=s)))]
  assert all(min(s[:2]) == 16 and s[2] == 3 for s in shapes)
  assert (16, 27, 3) in shapes and (27, 16, 3) in shapes  # rgb 18 x 30 and its rotated copy


def test_train_iterator_on_a_built_folder_of_mixed_files(tmp_path):
  from maskvq_jax.core import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import build  # pylint: disable=import-outside-toplevel
  from stage1_testlib import tiny  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "imgs"
  folder.mkdir()
  for name, data in _kinds().items():
    folder.joinpath(name).write_bytes(data)
  build.prepare("image_folder/kinds", data_dir=str(tmp_path / "tfds"), folder=str(folder),
                resize=0)
  c = tiny()
  c.input.source, c.input.name, c.input.data_dir = "tfds", "image_folder/kinds", str(
      tmp_path / "tfds")
  c.input.folder = str(folder)
  mesh = sharding_lib.make_mesh(c.mesh)
  sh = sharding_lib.batch_sharding(mesh, sharding_lib.get_rules(c.sharding_rules))
  before = pipeline.SKIPPED.value
  b = np.asarray(next(pipeline.train_iter(c, sh))["image"])
  assert b.shape == (8, c.input.res, c.input.res, 3) and b.dtype == np.uint8
  assert pipeline.SKIPPED.value == before
