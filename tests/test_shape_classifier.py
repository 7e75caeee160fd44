"""The quickstart's sample classifier (maskvq_jax/evaluation/shape_classifier.py).

At a 16 px / 200-step budget (seconds) it must name the colour of held-out real images; with the
training labels shuffled across images it must stay at chance (it learns from the labels, not
from something else); its cache must give back the same parameters; `accuracy` must agree with a
direct count over its predictions. The quickstart's 32 px / 1200-step budget (held-out class
accuracy 0.96, ~2 min of CPU) is measured by the quickstart itself (metrics.json "classifier").
"""
import os

import numpy as np
import pytest

from maskvq_jax.data.builders.shapes import generate as shapes_gen
from maskvq_jax.evaluation import shape_classifier as sc

SMALL = sc.TrainConfig(res=16, steps=200, num_train=1024)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("clf"))
  return d, sc.load_or_train(d, SMALL, num_heldout=512)


def test_square_and_diamond_are_one_measured_shape():
  names = [sc.MEASURED_SHAPES[i] for i in sc.SHAPE_TO_MEASURED]
  assert names == ["circle", "square/diamond", "triangle", "square/diamond", "star", "hexagon"]
  label = shapes_gen.SHAPES.index("diamond") * len(shapes_gen.COLORS) + 5
  assert sc.measured_shape([label]).tolist() == [sc.MEASURED_SHAPES.index("square/diamond")]


def test_learns_colour_and_beats_chance_on_heldout_real_images(small):
  _, clf = small
  h = clf.heldout
  assert h["num_images"] == 512 and not clf.cached
  assert h["colour"] >= 0.95, h
  # measured 0.36 / 0.36 at this budget: above the shuffled-label control below (class <= 0.10)
  assert h["class"] >= 0.2 and h["shape"] >= 0.3, h


def test_shuffled_labels_stay_at_chance():
  clf = sc.load_or_train(None, SMALL, num_heldout=512, permute_labels=True)
  h = clf.heldout  # chance: colour 1/8, class ~1/40; measured 0.11 / 0.04
  assert h["colour"] <= 0.25 and h["class"] <= 0.10, h


def test_accuracy_equals_a_direct_count(small):
  _, clf = small
  images, labels = sc.real_images("validation", 300, SMALL.res)  # 300: a padded last batch
  s, c = sc.predict(clf, images, batch=128)
  true_s = np.asarray([sc.MEASURED_SHAPES.index(
      "square/diamond" if shapes_gen.SHAPES[l // 8] in ("square", "diamond")
      else shapes_gen.SHAPES[l // 8]) for l in labels])
  acc = sc.accuracy(clf, images, labels)
  assert acc["shape"] == pytest.approx(np.mean(s == true_s))
  assert acc["colour"] == pytest.approx(np.mean(c == labels % 8))
  assert acc["class"] == pytest.approx(np.mean((s == true_s) & (c == labels % 8)))
  assert acc["num_images"] == 300
  # unpadded single-batch predictions agree with the padded batched ones
  s1, c1 = sc.predict(clf, images[256:])
  np.testing.assert_array_equal(s1, s[256:])
  np.testing.assert_array_equal(c1, c[256:])


def test_cache_returns_the_same_classifier_and_is_keyed_on_the_config(small):
  d, clf = small
  path = sc.cache_path(d, SMALL)
  assert os.path.isfile(path)
  again = sc.load_or_train(d, SMALL, num_heldout=512)
  assert again.cached and again.heldout == clf.heldout
  images, _ = sc.real_images("validation", 64, SMALL.res)
  for a, b in zip(sc.predict(clf, images), sc.predict(again, images)):
    np.testing.assert_array_equal(a, b)
  other = sc.load_or_train(d, SMALL, num_heldout=512, steps=3)  # another config: trained afresh
  assert not other.cached and os.path.isfile(sc.cache_path(d, other.config))


def test_bad_images_are_named():
  clf = sc.Classifier(SMALL, {}, {}, 0.0)
  with pytest.raises(ValueError, match="uint8"):
    sc.predict(clf, np.zeros((2, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match=r"multiples of 8, got \(20, 16\)"):
    sc.predict(clf, np.zeros((2, 20, 16, 3), np.uint8))
  with pytest.raises(ValueError, match="labels"):
    sc.accuracy(clf, np.zeros((2, 16, 16, 3), np.uint8), [1, 2, 3])


def test_max_pool_2x2_equals_flax_max_pool_values_and_gradients():
  """The classifier's pooling is `nn.max_pool` 2x2 / 2 written as a reshape + max (faster on
  XLA:CPU): same outputs, and the same gradients on inputs without ties in a window."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), (3, 8, 6, 5))  # continuous: no ties
  w = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))
  ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(np.asarray(sc.max_pool_2x2(x)), np.asarray(ref(x)))
  g = jax.grad(lambda v: (sc.max_pool_2x2(v) * w).sum())(x)
  g_ref = jax.grad(lambda v: (ref(v) * w).sum())(x)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))
  # each window passes its cotangent to exactly one input (its maximum)
  assert int((np.asarray(g) != 0).sum()) == w.size
