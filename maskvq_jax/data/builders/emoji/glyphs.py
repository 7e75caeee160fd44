"""The colour glyphs of Noto Color Emoji as images: which glyphs, their pixels, split and labels.

Why: a real, offline, permissively licensed (SIL OFL 1.1) set of ~3900 object-centric pictures
for the small-scale reproduction (`launch/repro_small.sh`), installable on any Debian/Ubuntu
machine with `apt-get install fonts-noto-color-emoji`, where the procedural shapes are too easy
to say anything about a tokenizer.

Which glyphs: every glyph that has a colour bitmap in the font's CBDT table, keyed by the Unicode
sequence that produces it (the font's cmap for single code points, its GSUB ligatures for
keycaps, flags, skin tones and ZWJ sequences; the logical order of a ZWJ sequence, not the
right-to-left copy the font also holds, see `_increasing_choice`), in the
font's glyph order. NotoColorEmoji 2.042 (Debian 12) has 3926.

Pixels: the glyph's embedded PNG (136 x 128, the 109 ppem strike that Pillow's
`ImageFont.truetype(font, 109)` + `draw.text(..., embedded_color=True)` draws) decoded by
`data/images.py`, i.e. composited over white; padded with white to a centred square and resized
with Pillow's Lanczos filter. Taking the bitmap directly rather than laying out text gives every
glyph (a ZWJ sequence needs a shaping engine Pillow may lack) and exact pixels: fully opaque
pixels equal what Pillow draws (tests/test_emoji.py), edges are composited exactly.

Split: a stable hash (md5) of the sequence with skin-tone modifiers and variation selectors
removed sends `validation_percent` % of the emoji to validation, so the five skin tones of a
person are all on one side and the held-out images are not near-copies of training ones.

Labels: `group`, the Unicode block of the base code point (emoticons, pictographs, transport,
...; flags on their own), and `kind` (single, keycap, flag, zwj, skin_tone, other).
"""
import dataclasses
import functools
import hashlib
import os

import numpy as np
from PIL import Image

from maskvq_jax.data import images

FONT_ENV = "MASKVQ_EMOJI_FONT"
FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian / Ubuntu
              "/usr/share/fonts/noto/NotoColorEmoji.ttf",             # Arch
              "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",  # Fedora
              "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf")
INSTALL_HINT = ("install it with `sudo apt-get install fonts-noto-color-emoji` (Debian/Ubuntu) "
                f"or point {FONT_ENV} at a NotoColorEmoji.ttf")

SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
VARIATION_SELECTORS = frozenset((0xFE0E, 0xFE0F))
ZWJ, KEYCAP = 0x200D, 0x20E3
GROUPS = ("emoticons", "pictographs", "transport_map", "supplemental", "extended_a",
          "misc_symbols", "dingbats", "flags", "other")
_BLOCKS = ((0x1F600, 0x1F64F, "emoticons"), (0x1F300, 0x1F5FF, "pictographs"),
           (0x1F680, 0x1F6FF, "transport_map"), (0x1F900, 0x1F9FF, "supplemental"),
           (0x1FA70, 0x1FAFF, "extended_a"), (0x2600, 0x26FF, "misc_symbols"),
           (0x2700, 0x27BF, "dingbats"))
KINDS = ("single", "keycap", "flag", "zwj", "skin_tone", "other")


@dataclasses.dataclass(frozen=True)
class Glyph:
  name: str                       # the font's glyph name
  sequence: tuple[int, ...]       # code points that produce it
  png: bytes                      # the embedded colour bitmap

  @property
  def key(self) -> str:
    """"1F468 200D 1F469" style, the example key in the dataset."""
    return " ".join(f"{c:04X}" for c in self.sequence)


def find_font(path: str = "") -> str:
  """The font file: `path`, else $MASKVQ_EMOJI_FONT, else the distributions' standard places.

  FileNotFoundError (one line, with the install command) when there is none.
  """
  if path:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"emoji font {path} does not exist; {INSTALL_HINT}")
    return path
  env = os.environ.get(FONT_ENV, "")
  if env:
    if not os.path.isfile(env):
      raise FileNotFoundError(f"{FONT_ENV}={env} does not exist; {INSTALL_HINT}")
    return env
  for p in FONT_PATHS:
    if os.path.isfile(p):
      return p
  raise FileNotFoundError(f"Noto Color Emoji font not found (looked in {FONT_PATHS[0]} and "
                          f"{len(FONT_PATHS) - 1} other places); {INSTALL_HINT}")


def font_info(path: str) -> dict:
  """Version and sha256 of the font, recorded with the dataset (its pixels depend on them)."""
  from fontTools.ttLib import TTFont  # pylint: disable=import-outside-toplevel  # matplotlib dep
  with open(path, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  font = TTFont(path, lazy=True)
  return {"font_sha256": sha, "font_revision": f"{font['head'].fontRevision:.3f}",
          "font_file": os.path.basename(path)}


def _private_use(cp: int) -> bool:
  return 0xE000 <= cp <= 0xF8FF or cp >= 0xF0000


def _canonical(seqs) -> tuple[int, ...]:
  """The shortest standard sequence (private-use code points only when nothing else)."""
  return min(seqs, key=lambda s: (any(_private_use(c) for c in s), len(s), s))


def _candidates(seqs) -> list[tuple[int, ...]]:
  """The shortest standard sequences of a glyph, sorted (two for ZWJ and tag sequences)."""
  best = _canonical(seqs)
  pua = any(_private_use(c) for c in best)
  return sorted(s for s in seqs
                if len(s) == len(best) and any(_private_use(c) for c in s) == pua)


def _increasing_choice(cands: list[list[tuple]]) -> list[tuple]:
  """One candidate per glyph, keeping the list as increasing as possible (Viterbi).

  Noto lists every ZWJ / tag sequence twice, in logical and in right-to-left order (its build
  adds the reversed one for RTL text), and both shape to the glyph; its glyph order is sorted by
  the logical sequences, so the logical one is the candidate that keeps the keys increasing.
  Score = number of increasing neighbours; ties go to the smaller candidate.
  """
  score = [0] * len(cands[0])
  back = []
  for prev, cur in zip(cands, cands[1:]):
    row, ptr = [], []
    for c in cur:
      j = max(range(len(prev)), key=lambda j: (score[j] + (prev[j] < c), -j))
      row.append(score[j] + (prev[j] < c))
      ptr.append(j)
    score, back = row, back + [ptr]
  j = max(range(len(score)), key=lambda k: (score[k], -k))
  picks = [j]
  for ptr in reversed(back):
    j = ptr[j]
    picks.append(j)
  return [c[k] for c, k in zip(cands, reversed(picks))]


@functools.lru_cache(maxsize=4)
def glyph_table(path: str) -> tuple[Glyph, ...]:
  """Every colour glyph reachable from a Unicode sequence, in the font's glyph order."""
  from fontTools.ttLib import TTFont  # pylint: disable=import-outside-toplevel
  font = TTFont(path)
  seqs: dict[str, set] = {}
  for cp, name in font.getBestCmap().items():
    seqs.setdefault(name, set()).add((cp,))
  ligatures = []  # (output glyph, input glyphs); an input may itself be a ligature's output
  if "GSUB" in font:
    for lookup in font["GSUB"].table.LookupList.Lookup:
      for sub in lookup.SubTable:
        sub = getattr(sub, "ExtSubTable", sub)
        for first, ligs in (getattr(sub, "ligatures", None) or {}).items():
          ligatures += [(lig.LigGlyph, (first, *lig.Component)) for lig in ligs]
  changed = True
  while changed:  # until every ligature whose inputs are reachable has its sequences
    changed = False
    for out, parts in ligatures:
      if all(p in seqs for p in parts):
        seq = tuple(cp for p in parts for cp in _canonical(seqs[p]))
        if seq not in seqs.setdefault(out, set()):
          seqs[out].add(seq)
          changed = True
  if "CBDT" not in font:
    raise ValueError(f"{path} has no colour bitmaps (CBDT table); is it NotoColorEmoji.ttf?")
  strike = font["CBDT"].strikeData[-1]  # the largest strike (Noto has one, 109 ppem)
  names = [n for n in font.getGlyphOrder() if n in strike and n in seqs]
  if not names:
    raise ValueError(f"{path} has no colour glyph reachable from a Unicode sequence")
  chosen = _increasing_choice([_candidates(seqs[n]) for n in names])
  return tuple(Glyph(n, seq, bytes(strike[n].imageData)) for n, seq in zip(names, chosen))


def render(glyph: Glyph, res: int) -> np.ndarray:
  """uint8 RGB [res, res, 3]: the bitmap over white, padded to a centred square, Lanczos-resized."""
  a = images.decode(glyph.png)
  h, w = a.shape[:2]
  side = max(h, w)
  canvas = np.full((side, side, 3), 255, np.uint8)
  top, left = (side - h) // 2, (side - w) // 2
  canvas[top:top + h, left:left + w] = a
  if side == res:
    return canvas
  return np.asarray(Image.fromarray(canvas).resize((res, res), Image.Resampling.LANCZOS), np.uint8)


def base_sequence(seq) -> tuple[int, ...]:
  """The sequence without skin tones and variation selectors: what the split hashes."""
  return tuple(c for c in seq if c not in SKIN_TONES and c not in VARIATION_SELECTORS)


def split_hash(seq) -> int:
  """0..9999, stable across machines and Python versions."""
  text = " ".join(f"{c:04X}" for c in base_sequence(seq))
  return int(hashlib.md5(text.encode()).hexdigest()[:8], 16) % 10000


def split_of(seq, validation_percent: float) -> str:
  return "validation" if split_hash(seq) < validation_percent * 100 else "train"


def group_of(seq) -> str:
  if any(0x1F1E6 <= c <= 0x1F1FF or 0xE0020 <= c <= 0xE007F for c in seq):
    return "flags"
  base = base_sequence(seq)
  for lo, hi, name in _BLOCKS:
    if base and lo <= base[0] <= hi:
      return name
  return "other"


def kind_of(seq) -> str:
  if KEYCAP in seq:
    return "keycap"
  if group_of(seq) == "flags":
    return "flag"
  if ZWJ in seq:
    return "zwj"
  if any(c in SKIN_TONES for c in seq):
    return "skin_tone"
  if len(base_sequence(seq)) == 1:
    return "single"
  return "other"


def plan_splits(glyphs, validation_percent: float) -> dict[str, list[Glyph]]:
  """{"train": glyphs, "validation": glyphs}, both non-empty; ValueError (one line) otherwise.

  When no glyph hashes to validation (only a small subset, `max_examples`), the group with the
  smallest hash goes there, so tests on a few glyphs still get both splits.
  """
  out = {"train": [], "validation": []}
  for g in glyphs:
    out[split_of(g.sequence, validation_percent)].append(g)
  if not out["validation"] and len({base_sequence(g.sequence) for g in out["train"]}) > 1:
    pick = min(out["train"], key=lambda g: (split_hash(g.sequence), g.sequence))
    base = base_sequence(pick.sequence)
    out["validation"] = [g for g in out["train"] if base_sequence(g.sequence) == base]
    out["train"] = [g for g in out["train"] if base_sequence(g.sequence) != base]
  if not out["train"] or not out["validation"]:
    raise ValueError(f"{len(glyphs)} emoji give {len(out['train'])} train / "
                     f"{len(out['validation'])} validation; both splits need one (use more "
                     "glyphs: max_examples >= 2)")
  return out
