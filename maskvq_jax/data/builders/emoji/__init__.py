"""Noto Color Emoji glyphs as object-centric RGB images (offline, OFL): glyph table, TFDS builder."""
