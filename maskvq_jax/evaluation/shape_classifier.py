"""A small CNN that names the shape and the colour of a procedural-shapes image.

Why: the quickstart's class rows must show the requested class, and "looks recognisable" needs a
number. This classifier is trained only on real procedural images and their labels (the train
split generated on the fly, fixed seed, 30-40 s on 2 CPU cores at 32 px, cached), checked on the
held-out `test` split (which neither trainer reads), and then applied to generated samples and to
stage-1 reconstructions: the fraction of samples it assigns to the class they were drawn for is the
sample accuracy. Its held-out accuracy on real images is reported next to it; a sample accuracy
only means something when that is high.

Two heads, shape (5-way: MEASURED_SHAPES) and colour (8-way); the joint class (label = shape_id *
len(COLORS) + colour_id) is right when both are. Training sees each batch under one of the 8
rotations / reflections of the square, which change neither the shape class (shapes are drawn at
random angles) nor the colour.

  clf = shape_classifier.load_or_train(files.join(workdir, "classifier"), res=32)
  acc = shape_classifier.accuracy(clf, images_u8, labels)   # {"class", "shape", "colour"}
"""
import dataclasses
import json
import time

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskvq_jax.core import files
from maskvq_jax.data.builders.shapes import generate as shapes_gen

# The generator draws every shape at a uniformly random angle, and its "square" and "diamond"
# are both the regular 4-gon (start angles pi/4 and 0): as images they are one distribution, so no
# classifier (and no class-conditional model) can tell them apart. They are measured as one
# shape, "square/diamond"; every other shape is its own class.
MEASURED_SHAPES = tuple(dict.fromkeys(
    "square/diamond" if s in ("square", "diamond") else s for s in shapes_gen.SHAPES))
SHAPE_TO_MEASURED = np.asarray([MEASURED_SHAPES.index("square/diamond" if s in ("square", "diamond")
                                                      else s) for s in shapes_gen.SHAPES], np.int32)
NUM_SHAPES = len(MEASURED_SHAPES)
NUM_COLOURS = len(shapes_gen.COLORS)


def measured_shape(labels):
  """Joint labels (shape_id * len(COLORS) + colour_id) -> measured shape ids (MEASURED_SHAPES)."""
  return SHAPE_TO_MEASURED[np.asarray(labels) // NUM_COLOURS]


def max_pool_2x2(x):
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` on even H, W as a reshape and a max: the same
  values, and the same gradients wherever the four inputs of a window differ. XLA:CPU lowers
  max_pool's gradient to a select-and-scatter that made this network's training step 2.5x slower
  (66-77 vs 23-30 ms at batch 64, 32 px, interleaved in one process, 2-core EPYC, 2026-12-02)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ShapeClassifier(nn.Module):
  """uint8-range images mapped to [-1, 1], [B, H, W, 3] -> (logits over MEASURED_SHAPES [B, 5],
  over COLORS [B, 8])."""
  width: int = 16
  hidden: int = 128

  @nn.compact
  def __call__(self, x):
    for i, mult in enumerate((1, 2, 4)):
      x = nn.relu(nn.Conv(self.width * mult, (3, 3), name=f"conv{i}")(x))
      x = max_pool_2x2(x)
    x = nn.relu(nn.Conv(self.width * 4, (3, 3), name="conv3")(x))
    # global max + mean pooling: the object is anywhere in the image
    x = jnp.concatenate([jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))], axis=-1)
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    return nn.Dense(NUM_SHAPES, name="shape")(x), nn.Dense(NUM_COLOURS, name="colour")(x)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything the trained parameters depend on (the cache is keyed on it)."""
  res: int = 32
  # measured at 32 px (held-out class accuracy): 400 steps / lr 4e-3: 0.67; 1200 steps / lr 3e-3:
  # 0.96 (~110 s of CPU time on a busy 2-core machine; GroupNorm after the convs: 0.37 at 400)
  steps: int = 1200
  batch: int = 64
  num_train: int = 3072
  lr: float = 3e-3
  width: int = 16
  seed: int = 0  # initialisation, batches, augmentation (the images are the dataset's, seed 0)
  permute_labels: bool = False  # the control: labels shuffled across images (must not learn)


@dataclasses.dataclass
class Classifier:
  config: TrainConfig
  params: dict
  heldout: dict  # accuracy on the held-out real images: {"class", "shape", "colour", "num_images"}
  train_seconds: float
  cached: bool = False


def real_images(split: str, num: int, res: int, seed: int = 0):
  """(uint8 images [num, res, res, 3], labels [num]) of the procedural `split`."""
  exs = [shapes_gen.make_example(seed, i, res, split) for i in range(num)]
  return np.stack([e["image"] for e in exs]), np.asarray([e["label"] for e in exs], np.int32)


def _to_float(images):
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def train(cfg: TrainConfig) -> tuple[dict, float]:
  """Trains on `cfg.num_train` generated train images. Returns (params, seconds)."""
  t0 = time.time()
  images, labels = real_images("train", cfg.num_train, cfg.res)
  if cfg.permute_labels:
    labels = np.random.default_rng(cfg.seed + 1).permutation(labels)
  model = ShapeClassifier(width=cfg.width)
  shape_all, colour_all = measured_shape(labels), labels % NUM_COLOURS
  params = model.init(jax.random.key(cfg.seed), _to_float(images[:1]))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps, alpha=0.05))

  def loss_fn(p, x, ys, yc):
    ls, lc = model.apply({"params": p}, x)
    return (optax.softmax_cross_entropy_with_integer_labels(ls, ys).mean()
            + optax.softmax_cross_entropy_with_integer_labels(lc, yc).mean())

  @jax.jit
  def step(p, opt, x, ys, yc):
    grads = jax.grad(loss_fn)(p, x, ys, yc)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt

  opt = tx.init(params)
  rng = np.random.default_rng(cfg.seed + 2)
  # a host loop: XLA:CPU ran this network's steps ~5x slower inside a jitted fori_loop
  for _ in range(cfg.steps):
    idx = rng.integers(0, cfg.num_train, cfg.batch)
    x = images[idx]
    k = int(rng.integers(8))
    x = np.rot90(x[:, :, ::-1] if k >= 4 else x, k % 4, axes=(1, 2))
    params, opt = step(params, opt, _to_float(np.ascontiguousarray(x)), shape_all[idx],
                       colour_all[idx])
  return jax.device_get(params), time.time() - t0


def predict(clf: Classifier, images, batch: int = 256):
  """uint8 images [N, H, W, 3] -> (MEASURED_SHAPES ids [N], COLORS ids [N])."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
  if images.shape[1] % 8 or images.shape[2] % 8:  # three 2x2 poolings (max_pool_2x2)
    raise ValueError(f"images: height and width must be multiples of 8, got {images.shape[1:3]}")
  apply = _apply_fn(clf.config.width)
  shapes, colours = [], []
  for i in range(0, len(images), batch):
    chunk = images[i:i + batch]
    n = len(chunk)
    if n < batch and len(images) > batch:  # one static batch shape: pad the last chunk
      chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], np.uint8)])
    ls, lc = apply(clf.params, _to_float(chunk))
    shapes.append(np.asarray(jnp.argmax(ls, -1))[:n])
    colours.append(np.asarray(jnp.argmax(lc, -1))[:n])
  return np.concatenate(shapes), np.concatenate(colours)


_APPLY = {}


def _apply_fn(width):
  if width not in _APPLY:
    model = ShapeClassifier(width=width)
    _APPLY[width] = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return _APPLY[width]


def accuracy(clf, images, labels) -> dict:
  """Fractions of `images` whose predicted class / shape / colour equal `labels`' (joint ids of
  the generator; "square" and "diamond" count as one shape, see MEASURED_SHAPES)."""
  labels = np.asarray(labels)
  if labels.shape != (len(images),):
    raise ValueError(f"labels: expected shape ({len(images)},), got {labels.shape}")
  s, c = predict(clf, images)
  ok_s, ok_c = s == measured_shape(labels), c == labels % NUM_COLOURS
  return {"class": float(np.mean(ok_s & ok_c)), "shape": float(np.mean(ok_s)),
          "colour": float(np.mean(ok_c)), "num_images": int(len(labels))}


def heldout_accuracy(params, cfg: TrainConfig, num: int = 1024) -> dict:
  """Accuracy on `num` images of the held-out `test` split (true labels, never permuted)."""
  images, labels = real_images("test", num, cfg.res)
  clf = Classifier(cfg, params, {}, 0.0)
  return accuracy(clf, images, labels)


def cache_path(directory: str, cfg: TrainConfig) -> str:
  return files.join(directory, f"shape_classifier_r{cfg.res}_s{cfg.steps}_w{cfg.width}.npz")


def load_or_train(directory: str | None, cfg: TrainConfig | None = None, *,
                  num_heldout: int = 1024, **overrides) -> Classifier:
  """The classifier for `cfg` (+ overrides): read from `directory`'s npz when it was trained with
  the same config, else trained, evaluated on the held-out split and saved there (directory
  None: not cached)."""
  cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
  meta_want = dict(dataclasses.asdict(cfg), num_heldout=num_heldout)
  path = cache_path(directory, cfg) if directory is not None else None
  if path is not None and files.exists(path):
    with files.open(path, "rb") as f:
      z = np.load(f)
      meta = json.loads(str(z["meta"]))
      if meta["config"] == meta_want:
        flat = {tuple(k.split("/")): z[k] for k in z.files if k != "meta"}
        return Classifier(cfg, traverse_util.unflatten_dict(flat), meta["heldout"],
                          meta["train_seconds"], cached=True)
  params, secs = train(cfg)
  heldout = heldout_accuracy(params, cfg, num_heldout)
  clf = Classifier(cfg, params, heldout, round(secs, 1))
  if path is not None:
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    meta = {"config": meta_want, "heldout": heldout, "train_seconds": clf.train_seconds}
    files.save_npz(path, meta=np.asarray(json.dumps(meta)), **flat)
  return clf
