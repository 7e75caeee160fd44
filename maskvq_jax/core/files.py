"""Paths that may be local or on a cloud bucket (gs://...), for reports, figures and workdirs.

Why: trainer workdirs on TPU pods usually live in GCS (the trainer's checkpointing uses etils
epath), and `os.path.abspath("gs://b/x")` silently turns a bucket path into a local one. Every
evaluation path goes through these helpers: local paths are made absolute and written atomically
(tmp file + rename); bucket paths go through `etils.epath` (object writes are atomic already).
"""
import io
import os

from etils import epath


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def absolute(path) -> str:
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def write_bytes(path, data: bytes) -> str:
  path = absolute(path)
  if is_remote(path):
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".partial"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
  return path


def write_text(path, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def read_text(path) -> str:
  return epath.Path(absolute(path)).read_text()


def save_png(path, array) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return write_bytes(path, buf.getvalue())


def save_npz(path, **arrays) -> str:
  import numpy as np  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return write_bytes(path, buf.getvalue())
