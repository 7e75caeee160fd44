"""The one image decoder: any common file (or array) -> uint8 RGB [H, W, 3].

Used by the folder builder (`data/builders/image_folder`), the training/eval input pipeline
(`data/pipeline.py`) and the evaluator's folder sources (`evaluation/data.py`), so every path sees
the same pixels. What it does, by PIL mode:

  * EXIF orientation is applied first (a phone photo stored sideways comes out upright).
  * 8-bit RGB as is; "1" / "L" grey repeated over the three channels.
  * 16-bit grey ("I;16", "I;16B", "I;16L", "I;16N", and "I", whose values are taken as 16-bit,
    as PIL opens 16-bit PNG/TIFF) scaled to 8 bits: round(v * 255 / 65535). 16-bit colour PNGs
    are read by PIL at 8 bits per channel already.
  * Palette ("P", "PA"), with or without a transparent index, through its colours.
  * CMYK (and YCbCr, LAB, HSV, RGBX) by PIL's conversion to RGB.
  * Anything with alpha ("RGBA", "LA", "PA", premultiplied "RGBa"/"La", a transparent palette
    index or colour key) is composited over `BACKGROUND` (white):
    out = round((c * a + BACKGROUND * (255 - a)) / 255), exactly in integers.
  * 32-bit float ("F") images are refused (their value range is not defined).

Arrays (TFDS-decoded images) go through `from_array`: uint8 [H, W, 3] unchanged, grey [H, W] or
[H, W, 1] repeated, [H, W, 2] / [H, W, 4] composited, uint16 scaled as above.
Errors (unreadable or unsupported data) raise `ValueError` / `OSError`; callers decide whether to
skip and count (training) or fail (evaluation).
"""
import io
from typing import Union

from etils import epath
import numpy as np
from PIL import ExifTags
from PIL import Image
from PIL import ImageOps

BACKGROUND = (255, 255, 255)  # what transparent pixels become (builder, pipeline and evaluator)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_GREY_16 = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def is_image_name(name: str) -> bool:
  return str(name).lower().endswith(EXTENSIONS)


def _grey16_to_u8(a: np.ndarray) -> np.ndarray:
  v = np.clip(a.astype(np.int64), 0, 65535)
  return ((v * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)


def _grey_to_rgb(g: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=-1))


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] colour over `BACKGROUND` with uint8 [H, W] alpha (255 = opaque)."""
  c = rgb.astype(np.int32)
  a = alpha.astype(np.int32)[..., None]
  bg = np.asarray(BACKGROUND, np.int32)
  return ((c * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> np.ndarray:
  """An opened PIL image -> uint8 RGB [H, W, 3] (see the module docstring)."""
  if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
    im = ImageOps.exif_transpose(im)
  mode = im.mode
  if mode == "RGB" and "transparency" not in im.info:
    return np.array(im, np.uint8)
  if mode in _GREY_16:
    return _grey_to_rgb(_grey16_to_u8(np.asarray(im)))
  if mode == "F":
    raise ValueError("32-bit float images (PIL mode F) are not supported: their value range is "
                     "not defined; convert them to 8- or 16-bit first")
  if mode in ("1", "L") and "transparency" not in im.info:
    return _grey_to_rgb(np.asarray(im.convert("L"), np.uint8))
  if mode in _ALPHA or "transparency" in im.info:
    rgba = np.asarray(im.convert("RGBA"), np.uint8)
    return composite(rgba[..., :3], rgba[..., 3])
  return np.array(im.convert("RGB"), np.uint8)  # P, CMYK, YCbCr, LAB, HSV, RGBX


def decode(data: Union[bytes, bytearray, memoryview]) -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, WebP, BMP, GIF, TIFF, ...) -> uint8 RGB [H, W, 3]."""
  with Image.open(io.BytesIO(bytes(data))) as im:
    return to_rgb(im)


def read(path) -> np.ndarray:
  """An image file (local or a URL such as gs://...) -> uint8 RGB [H, W, 3]."""
  return decode(epath.Path(path).read_bytes())


def from_array(a) -> np.ndarray:
  """An already decoded image array -> uint8 RGB [H, W, 3] (see the module docstring)."""
  a = np.asarray(a)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"an image array must be [H, W] or [H, W, 1|2|3|4], got shape {a.shape}")
  if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # uint16, either byte order
    a = _grey16_to_u8(a)
  elif a.dtype != np.uint8:
    raise ValueError(f"an image array must be uint8 or uint16, got {a.dtype}")
  c = a.shape[-1]
  if c == 3:
    return a
  colour = _grey_to_rgb(a[..., 0]) if c <= 2 else a[..., :3]
  return colour if c == 1 else composite(colour, a[..., -1])
