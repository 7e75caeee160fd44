"""Procedural "shapes" images: one object (shape x colour x size) on a plain or gradient background.

Why: a download-free dataset whose images have a known object mask, class label and caption, so
that stage 1 can be trained anywhere (CPU quickstart, tests) and we can measure whether the
adaptive mask keeps the regions that matter (the object) rather than the background.

Every example is a pure function of (seed, split, index): `np.random.default_rng([seed, split_id,
index])`, drawn with PIL at 4x and box-downsampled (anti-aliased edges); the mask is the object's
coverage at the final resolution thresholded at 0.5 (uint8 0/1).
"""
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "magenta": (200, 50, 200), "cyan": (40, 200, 210), "white": (240, 240, 240),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {
    "black": (10, 10, 10), "gray": (120, 120, 120), "navy": (20, 25, 80), "olive": (90, 100, 30),
    "brown": (100, 60, 30), "teal": (20, 90, 90), "beige": (215, 200, 170), "purple": (70, 30, 90),
}
SIZES = {"small": 0.3, "medium": 0.45, "large": 0.65}  # object diameter / image side
SPLITS = {"train": 0, "validation": 1, "test": 2}
NUM_CLASSES = len(SHAPES) * len(COLORS)  # label = shape_id * len(COLORS) + colour_id
_SS = 4  # supersampling factor


def _polygon(shape, cx, cy, r, angle):
  if shape == "square":
    n, start, radii = 4, math.pi / 4, (r,)
  elif shape == "diamond":
    n, start, radii = 4, 0.0, (r,)
  elif shape == "triangle":
    n, start, radii = 3, -math.pi / 2, (r,)
  elif shape == "hexagon":
    n, start, radii = 6, 0.0, (r,)
  elif shape == "star":
    n, start, radii = 10, -math.pi / 2, (r, 0.45 * r)
  else:
    raise ValueError(shape)
  pts = []
  for i in range(n):
    a = start + angle + 2 * math.pi * i / n
    rr = radii[i % len(radii)]
    pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
  return pts


def _background(rng, res, names):
  c1 = np.array(BACKGROUNDS[names[0]], np.float32)
  if len(names) == 1:
    return np.broadcast_to(c1, (res, res, 3)).copy()
  c2 = np.array(BACKGROUNDS[names[1]], np.float32)
  theta = rng.uniform(0, 2 * math.pi)
  yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) / max(res - 1, 1) - 0.5
  t = np.clip((xx * math.cos(theta) + yy * math.sin(theta)) / 1.42 + 0.5, 0.0, 1.0)[..., None]
  return c1 * (1 - t) + c2 * t


def make_example(seed: int, index: int, res: int, split: str = "train") -> dict:
  """The example `index` of `split`: dict(image uint8 [res,res,3], mask uint8 [res,res,1], label,
  shape, colour, size, background, caption)."""
  rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
  shape_id = int(rng.integers(len(SHAPES)))
  colour_id = int(rng.integers(len(COLORS)))
  size_name = list(SIZES)[int(rng.integers(len(SIZES)))]
  bg_names = list(BACKGROUNDS)
  gradient = bool(rng.random() < 0.5)
  bg = [bg_names[int(i)] for i in rng.choice(len(bg_names), 2 if gradient else 1, replace=False)]
  shape, colour = SHAPES[shape_id], list(COLORS)[colour_id]

  big = res * _SS
  r = SIZES[size_name] * big / 2 * rng.uniform(0.9, 1.1)
  cx, cy = rng.uniform(r, big - r, size=2)
  angle = rng.uniform(0, 2 * math.pi)
  alpha = Image.new("L", (big, big), 0)
  draw = ImageDraw.Draw(alpha)
  if shape == "circle":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
  else:
    draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
  a = np.asarray(alpha.resize((res, res), Image.Resampling.BOX), np.float32)[..., None] / 255.0

  img = _background(rng, res, bg)
  img = img * (1 - a) + np.array(COLORS[colour], np.float32) * a
  img = np.clip(np.rint(img + rng.normal(0, 2.0, img.shape)), 0, 255).astype(np.uint8)
  bg_text = f"a plain {bg[0]} background" if len(bg) == 1 else f"a {bg[0]} to {bg[1]} gradient"
  return dict(image=img, mask=(a >= 0.5).astype(np.uint8), label=shape_id * len(COLORS) + colour_id,
              shape=shape_id, colour=colour_id, size=list(SIZES).index(size_name),
              background=bg_names.index(bg[0]),
              caption=f"a {size_name} {colour} {shape} on {bg_text}")


class ShapesSource:
  """Random-access source (grain-compatible) generating examples on the fly.

  `start`/`stop` select a contiguous index range, e.g. this host's share of the split.
  """

  def __init__(self, res: int, num_examples: int, seed: int = 0, split: str = "train",
               start: int = 0, stop: int | None = None):
    self.res, self.seed, self.split = res, seed, split
    self.start, self.stop = start, num_examples if stop is None else stop

  def __len__(self):
    return self.stop - self.start

  def __getitem__(self, i):
    if not 0 <= i < len(self):
      raise IndexError(i)
    ex = make_example(self.seed, self.start + int(i), self.res, self.split)
    ex.pop("caption")  # strings never go to the device; the TFDS builder keeps them
    return ex
