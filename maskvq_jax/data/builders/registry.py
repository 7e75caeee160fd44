"""Name -> TFDS builder for our own datasets (shapes/*, image_folder/*); others use the catalog."""
from maskvq_jax.data.builders.image_folder import image_folder
from maskvq_jax.data.builders.shapes import shapes


def builder(name: str, *, data_dir=None, folder: str = "", resize: int = 256):
  """A builder (array_record) for our datasets; None for catalog names such as imagenet2012."""
  family, _, cfg = name.partition("/")
  if family == "shapes":
    return shapes.Shapes(config=cfg or "32", data_dir=data_dir or None, file_format="array_record")
  if family == "image_folder":
    cfg = cfg or "custom"
    rule = "ffhq" if cfg == "ffhq" else "hash"
    return image_folder.ImageFolder(
        config=image_folder.ImageFolderConfig(name=cfg, folder=folder, split_rule=rule,
                                              resize=resize),
        data_dir=data_dir or None, file_format="array_record")
  return None
