"""TFDS storage formats: the input pipeline reads ArrayRecord (random access), never TFRecord.

Why: grain needs random access, which `tfds.data_source` only gives for ArrayRecord files, while
`tfds build` writes TFRecord unless told otherwise. A dataset prepared only as TFRecord is refused
when the pipeline is created, with a one-line message naming the dataset and the two fixes:
rebuild it (`python -m maskvq_jax.data.build --name NAME`, which writes ArrayRecord and needs no
extra packages) or convert it in place (`tfds convert_format`, which in TFDS 4.9 needs
`pip install apache-beam mlcroissant`). A converted dataset records ArrayRecord as an alternative
format, which TFDS's code-defined builders do not pick up; it is then read through
`tfds.builder_from_directory`.
"""
import tensorflow_datasets as tfds

_CONVERT_NEEDS = "pip install apache-beam mlcroissant"


def stored_formats(b) -> list[str]:
  """Formats the prepared dataset of builder `b` has on disk (its main one first)."""
  proto = b.info.as_proto
  return list(dict.fromkeys([proto.file_format or "tfrecord", *proto.alternative_file_formats]))


def rebuild_command(name: str, b) -> str:
  manual = " --manual_dir <downloaded files>" if getattr(b, "MANUAL_DOWNLOAD_INSTRUCTIONS",
                                                         None) else ""
  folder = " --folder <images>" if name.startswith("image_folder") else ""
  return (f"python -m maskvq_jax.data.build --name {name} --data_dir {b.data_dir_root}"
          f"{folder}{manual}")


def tfrecord_only_message(name: str, b) -> str:
  return (f"dataset {name} in {b.data_dir} is stored as {'/'.join(stored_formats(b))} only, but "
          f"the input pipeline reads ArrayRecord (random access): rebuild it with `"
          f"{rebuild_command(name, b)}` after moving {b.data_dir} away, or convert it in place "
          f"with `tfds convert_format --dataset_version_dir={b.data_dir} "
          f"--out_file_format=array_record` (needs {_CONVERT_NEEDS})")


def random_access_builder(b, name: str):
  """`b`, or a read-only builder over its directory when ArrayRecord is an added format.

  Raises ValueError (one line, naming the dataset and the fixes) when there is no ArrayRecord.
  """
  ok = {f.value for f in tfds.core.FileFormat.with_random_access()}
  if b.info.file_format is not None and b.info.file_format.value in ok:
    return b
  if any(f in ok for f in stored_formats(b)):
    return tfds.builder_from_directory(b.data_dir)
  raise ValueError(tfrecord_only_message(name, b))
