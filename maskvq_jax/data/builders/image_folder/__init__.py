"""TFDS builder for local image folders (FFHQ with the taming split, or any folder)."""
