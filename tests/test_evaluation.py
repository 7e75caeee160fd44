"""Tests for maskvq_jax.evaluation and the evaluate CLI.

Metric maths is checked on random or constructed features with independent float64 references
(numpy/scipy) or hand-derived answers; the CLI runs end to end on a tiny random-init tokenizer
over 4 procedural images (the InceptionV3 on a handful of images is the slow part).
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from maskvq_jax.core import checkpointing
from maskvq_jax import evaluate
from maskvq_jax.data import tokenizer as tokenizer_io
from maskvq_jax.data import runs as checkpoints
from maskvq_jax.evaluation import codebook
from maskvq_jax.evaluation import data
from maskvq_jax.evaluation import features
from maskvq_jax.evaluation import fid
from maskvq_jax.core import files
from maskvq_jax.evaluation import inception_score
from maskvq_jax.evaluation import mask_analysis
from maskvq_jax.evaluation import prec_recall
from maskvq_jax.core import progress
from maskvq_jax.models.mqvae import MQVAE

TINY = dict(resolution=16, ch=32, ch_mult=(1, 1), z_channels=32, codebook_size=32,
            codebook_dim=16, demasker_layers=1, attn_resolutions=(), num_res_blocks=1)


# ----- FID -----------------------------------------------------------------------------------------
def _scipy_fid(x, y):
  """Independent reference: np.cov + scipy.linalg.sqrtm(S1 S2), float64 (pytorch-fid's formula)."""
  m1, m2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.mark.parametrize("n1,n2,d", [(300, 200, 24), (12, 9, 40)])  # full rank / rank-deficient
def test_fid_matches_independent_scipy(n1, n2, d):
  rng = np.random.default_rng(n1)
  x = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
  y = rng.normal(size=(n2, d)) * 1.3 + 0.2
  want = _scipy_fid(x, y)
  assert fid.fid_from_features(x, y) == pytest.approx(want, rel=1e-6)
  assert fid.frechet_distance(*fid.statistics(x), *fid.statistics(y)) == pytest.approx(want,
                                                                                        rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 32)) + 3.0
  scale = np.trace(np.cov(x, rowvar=False))
  assert fid.fid_from_features(x, x) <= 1e-9 * scale
  assert fid.frechet_distance(*fid.statistics(x), *fid.statistics(x)) <= 1e-9 * scale
  assert fid.fid_from_features(x, x + 0.5) == pytest.approx(0.25 * 32, rel=1e-9)  # pure shift


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 5 + 1 + 1 + 9
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_statistics_are_float64_and_round_trip_in_standard_npz(tmp_path):
  x = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
  mu, sigma = fid.statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
  path = fid.save_statistics(tmp_path / "s.npz", mu, sigma, meta={"split": "validation", "n": 50})
  with np.load(path) as z:  # the standard keys, readable by other FID tools
    assert {"mu", "sigma"} <= set(z.files)
  mu2, sigma2 = fid.load_statistics(path)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  assert fid.load_meta(path) == {"split": "validation", "n": 50}
  np.savez(tmp_path / "bad.npz", m=mu)
  with pytest.raises(ValueError, match=r"missing \['mu', 'sigma'\]"):
    fid.load_statistics(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match="FID statistics need at least 2 feature rows, got 1"):
    fid.statistics(x[:1])


# ----- Inception Score ---------------------------------------------------------------------------
def _head_file(tmp_path, kernel, bias=None, keys=("kernel", "bias")):
  arrays = {keys[0]: kernel}
  if bias is not None:
    arrays[keys[1]] = bias
  np.savez(tmp_path / "head.npz", **arrays)
  return str(tmp_path / "head.npz")


def test_inception_score_constructed_cases(tmp_path):
  c, d, n = 10, 16, 100
  pool3 = np.eye(d)[np.arange(n) % c]  # image i "shows" class i mod 10
  kernel = np.zeros((d, c))
  kernel[np.arange(c), np.arange(c)] = 60.0  # confident, distinct predictions
  head = inception_score.load_head(_head_file(tmp_path, kernel, np.full(c, 5.0)), d)
  mean, std = inception_score.inception_score_from_pool3(pool3, head, splits=10)
  assert mean == pytest.approx(c, rel=1e-12) and std < 1e-9  # every split holds all 10 classes
  flat = inception_score.LogitsHead(np.zeros((d, c)), None)  # uniform predictions
  assert inception_score.inception_score_from_pool3(pool3, flat, splits=4)[0] == pytest.approx(1.0)
  # two classes, p(y|x) = (3/4, 1/4) or (1/4, 3/4), marginal (1/2, 1/2): by hand
  logits = np.log(np.array([[0.75, 0.25], [0.25, 0.75]] * 3))
  kl = 0.75 * np.log(1.5) + 0.25 * np.log(0.5)
  assert inception_score.inception_score(logits, splits=1)[0] == pytest.approx(np.exp(kl), rel=1e-12)


def test_inception_score_bias_is_opt_in(tmp_path):
  d = c = 3
  kernel = np.eye(d) * 50.0  # image i -> class i, confidently
  bias = np.array([0.0, 0.0, 100.0])  # with the bias every image -> class 2
  head = inception_score.load_head(_head_file(tmp_path, kernel, bias, keys=("w", "b")), d)
  pool3 = np.eye(d)
  unbiased = inception_score.inception_score_from_pool3(pool3, head, splits=1)[0]
  biased = inception_score.inception_score_from_pool3(pool3, head, splits=1, use_bias=True)[0]
  assert unbiased == pytest.approx(3.0, rel=1e-9)
  assert biased == pytest.approx(1.0, rel=1e-9)
  no_bias = inception_score.LogitsHead(head.kernel, None)
  with pytest.raises(ValueError, match="use_bias=True but the logits head has no bias"):
    inception_score.inception_score_from_pool3(pool3, no_bias, splits=1, use_bias=True)


def test_inception_score_without_head_is_a_clear_error(tmp_path):
  with pytest.raises(inception_score.InceptionScoreUnavailable, match="--inception_logits_npz"):
    inception_score.require_head(None)
  with pytest.raises(ValueError, match=r"expected \[2048, num_classes\]"):
    inception_score.load_head(_head_file(tmp_path, np.zeros((100, 1008))))
  np.savez(tmp_path / "other.npz", weights=np.zeros((2048, 1008)))
  with pytest.raises(ValueError, match="no logits kernel found"):
    inception_score.load_head(str(tmp_path / "other.npz"))


# ----- precision / recall ------------------------------------------------------------------------
def _line(xs):
  return np.stack([np.asarray(xs, np.float32), np.zeros(len(xs), np.float32)], axis=1)


def test_precision_recall_known_answers():
  real = _line(range(10))  # k=3 radii: 3 at the ends, 2 inside
  np.testing.assert_allclose(np.sqrt(prec_recall.knn_radii_sq(real, 3, block=3)),
                             [3, 2, 2, 2, 2, 2, 2, 2, 2, 3], atol=1e-5)
  # fakes: 4.5 (inside), 20 (outside), -2.5 (within 3 of 0), -3.5 (outside)
  fake = _line([4.5, 20.0, -2.5, -3.5])
  assert prec_recall.coverage(fake, real, prec_recall.knn_radii_sq(real, 3), block=3) == 0.5
  # fake = {0,1,2,3}: radii 3,2,2,3 -> covers real 0..6 -> recall 0.7; precision 1
  pr = prec_recall.precision_recall(real, _line([0, 1, 2, 3]), k=3, block=4)
  assert pr == {"precision": 1.0, "recall": pytest.approx(0.7)}
  far = prec_recall.precision_recall(real, _line([100, 101, 102, 103]), k=3)
  assert far == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_matches_brute_force_numpy():
  rng = np.random.default_rng(3)
  real = rng.normal(size=(37, 5)).astype(np.float32)
  fake = (rng.normal(size=(23, 5)) * 1.4 + 0.5).astype(np.float32)

  def brute(a, b, k):
    dab = np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1))
    daa = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    radii = np.sort(daa, axis=1)[:, k]
    return float(np.mean(np.any(dab <= radii[None], axis=1)))

  got = prec_recall.precision_recall(real, fake, k=3, block=8)
  assert got["precision"] == pytest.approx(brute(real, fake, 3))
  assert got["recall"] == pytest.approx(brute(fake, real, 3))
  with pytest.raises(ValueError, match=r"k=40 must be an int in \[1, N-1\] with N=37 points"):
    prec_recall.knn_radii_sq(real, 40)


# ----- codebook usage ----------------------------------------------------------------------------
def test_codebook_usage_constructed():
  codes = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])  # 3 of 8 used; frequencies 1/4, 1/4, 1/2
  u = codebook.codebook_usage(codes, 8)
  assert u["used_fraction"] == 3 / 8 and u["unused_fraction"] == 5 / 8
  assert u["num_used"] == 3 and u["num_tokens"] == 8
  assert u["perplexity"] == pytest.approx(2 ** 1.5, rel=1e-12)  # exp(1.5 ln 2)
  acc = codebook.CodebookUsage(8)
  acc.update(codes[:1])
  acc.update(codes[1:])
  assert acc.result() == u
  with pytest.raises(ValueError, match=r"codes span \[0, 9\], outside \[0, 8\)"):
    acc.update(np.array([0, 9]))


# ----- sharded feature extraction ----------------------------------------------------------------
class _TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3))(x.astype(jnp.float32) / 255.0))
    return nn.Dense(5)(jnp.mean(h, axis=(1, 2)))


def test_host_range_covers_every_example_once():
  for n, c in [(10, 3), (7, 8), (0, 2), (13, 1)]:
    ranges = [features.host_range(n, i, c) for i in range(c)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_sharded_extraction_equals_single_device_with_odd_count():
  assert jax.device_count() == 8
  n = 13
  images = np.random.default_rng(4).integers(0, 256, (n, 8, 8, 3), np.uint8)
  net = _TinyNet()
  params = net.init(jax.random.key(0), images[:1])
  fn = lambda p, b: {"feat": net.apply(p, b["image"]), "pix": jnp.sum(b["image"], (1, 2, 3))}

  def run(mesh, bs):
    runner = features.BatchRunner(fn, params, global_batch_size=bs, mesh=mesh)
    src, total = data.array_source(images)
    shard = data.host_shard(src, total, runner.local_batch_size, num_threads=1)
    return runner.run(shard.batches(), num_local=shard.num_local, index_offset=shard.start)

  sharded = run(features.data_mesh(), 8)  # 2 steps, 3 padded rows
  single = run(features.data_mesh(jax.devices()[:1]), 3)  # 5 steps, 2 padded rows
  np.testing.assert_array_equal(sharded["index"], np.arange(n))
  np.testing.assert_array_equal(single["index"], np.arange(n))
  np.testing.assert_allclose(sharded["feat"], single["feat"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sharded["feat"], np.asarray(net.apply(params, images)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(sharded["pix"], images.reshape(n, -1).sum(1))  # once each


def test_batch_runner_rejects_bad_batches():
  with pytest.raises(ValueError, match="global_batch_size=12"):
    features.BatchRunner(lambda p, b: b, {}, global_batch_size=12)
  runner = features.BatchRunner(lambda p, b: {"x": b["x"]}, {}, global_batch_size=8)
  batches = [{"x": np.ones((8, 2), np.float32)}] * 2
  with pytest.raises(ValueError, match="num_local=9"):
    runner.run(iter(batches), num_local=9)
  with pytest.raises(ValueError, match="every host has 0 examples"):
    runner.run(iter(()), num_local=0, spec={"x": ((2,), np.float32)})


def test_progress_reports_rate_and_eta(capsys):
  p = progress.Progress("demo", 10, every_s=0.0, enabled=True)
  p(5)
  p(10)
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and err[0].startswith("[demo] [##########..........] 5/10 (50.0%)")
  assert "ETA" in err[0] and err[1].startswith("[demo] [####################] 10/10 (100.0%)")


# ----- mask analysis -----------------------------------------------------------------------------
def test_object_coverage_constructed(tmp_path):
  obj = np.zeros((1, 4, 4, 1), np.uint8)
  obj[0, :2, :2] = 1  # object fills the top-left cell of a 2x2 grid
  cells = mask_analysis.pool_to_grid(obj, 2)
  np.testing.assert_allclose(cells, [[1.0, 0.0, 0.0, 0.0]])
  cov = mask_analysis.object_coverage(jnp.array([[1.0, 0.0, 0.0, 1.0]]), cells)
  assert mask_analysis.summarize(cov) == {
      "kept_on_object": 0.5, "chance": 0.25, "lift": 2.0,
      "kept_on_object_tokens": 0.5, "chance_tokens": 0.25, "lift_tokens": 2.0}
  # a kept cell 1/4 covered counts in area but is not "on the object" as a token
  obj[0, 3, 3] = 1
  cov = mask_analysis.summarize(mask_analysis.object_coverage(
      jnp.array([[1.0, 0.0, 0.0, 1.0]]), mask_analysis.pool_to_grid(obj, 2)))
  assert cov["kept_on_object"] == pytest.approx((1 + 0.25) / 2)
  assert cov["chance"] == pytest.approx(1.25 / 4)
  assert cov["kept_on_object_tokens"] == 0.5 and cov["chance_tokens"] == 0.25
  assert cov["lift"] == pytest.approx(2.0) and cov["lift_tokens"] == 2.0
  images = np.random.default_rng(5).integers(0, 256, (2, 4, 4, 3), np.uint8)
  scores = np.array([[0.9, 0.1, 0.2, 0.8], [0.0, 1.0, 0.5, 0.5]])
  mask = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], np.float32)
  paths = mask_analysis.save_figures(images, scores, mask, str(tmp_path), min_side=8)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(paths["grid"]) as im:
    assert im.size == (3 * 8, 2 * 8)  # 3 panels wide, 2 examples high, upscaled x2
  with Image.open(paths["overlay_00"]) as im:
    ov = np.asarray(im)
  # a dropped cell is dimmed to 30 %, up to rounding (top-right cell, interior pixel)
  np.testing.assert_allclose(ov[0:2, 4:8][1, 1], np.rint(np.repeat(np.repeat(
      images[0], 2, 0), 2, 1)[1, 5] * 0.3), atol=1)
  with Image.open(paths["heat_01"]) as im:
    assert np.asarray(im).shape == (8, 8, 3)


# ----- loading workdirs and the CLI --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
  model = MQVAE(**TINY)
  v = model.init({"params": jax.random.key(0), "mask": jax.random.key(1)},
                 jnp.zeros((1, 16, 16, 3)), train=False)
  v = {k: v[k] for k in ("params", "batch_stats", "vq_stats") if k in v}
  v = jax.tree.map(np.asarray, nn.meta.unbox(v))
  d = tmp_path_factory.mktemp("tok")
  tokenizer_io.save_tokenizer(str(d / "tokenizer"), v, TINY)
  return str(d / "tokenizer"), model, v


def test_stage1_workdir_partial_restore(tiny_tokenizer, tmp_path):
  _, model, v = tiny_tokenizer
  state = {"step": np.int32(3), "params": {"g": v["params"], "d": {"w": np.ones(3, np.float32)}},
           "opt_state": {"g": {"mu": np.zeros(2, np.float32)}},
           "batch_stats": {"g": v["batch_stats"], "d": {}}, "vq_stats": v["vq_stats"],
           "rng": np.zeros(2, np.uint32)}
  config = {"trainer": "mqvae", "model": dict(TINY), "param_ema": 0.0,
            "input": {"name": "shapes", "source": "procedural", "res": 16, "data_dir": ""},
            "eval": {"split": "validation", "num_examples": 4}}
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1, async_save=False)
  ck.save(3, state, meta={"step": 3, "config": config}, force=True)
  ck.close()
  loc = checkpoints.describe(str(tmp_path))
  assert (loc.kind, loc.step) == ("stage1", 3)
  assert checkpoints.dataset_defaults(loc)["num_examples"] == 4
  model2, v2, info = checkpoints.load_tokenizer(str(tmp_path))
  assert model2.num_tokens == model.num_tokens and info["kind"] == "stage1"
  assert info["tokens_per_image"] == int(0.3 * 64) and info["keep_ratio"] == 0.3
  for a, b in zip(jax.tree.leaves(v2), jax.tree.leaves(v)):
    np.testing.assert_array_equal(np.asarray(a), b)
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    checkpoints.describe(str(tmp_path / "nothing"))
  # the CLI takes the dataset from the run's config and writes <workdir>/evaluation/report.json
  assert evaluate.main(["--workdir", str(tmp_path), "--metrics", "psnr,usage",
                        "--batch_size", "8"]) == 0
  rep = json.loads((tmp_path / "evaluation" / "report.json").read_text())
  assert rep["target"] == {"kind": "stage1", "path": str(tmp_path), "step": 3, "samples": None}
  assert rep["dataset"]["name"] == "shapes" and rep["dataset"]["source"] == "procedural"
  assert rep["num_examples"]["reconstruction"] == 4
  assert rep["metrics"]["codebook/num_tokens"] == 4 * model.num_tokens


def test_evaluate_cli_on_tiny_tokenizer_and_samples(tiny_tokenizer, tmp_path, capsys):
  tok_dir, model, _ = tiny_tokenizer
  cache = str(tmp_path / "cache")
  common = ["--dataset", "shapes/16", "--source", "procedural", "--num_examples", "4",
            "--split", "validation", "--res", "16", "--batch_size", "8", "--stats_cache", cache]
  out = tmp_path / "eval" / "report.json"
  rc = evaluate.main(["--workdir", tok_dir, "--metrics", "rfid,psnr,ssim,lpips,usage,mask",
                      "--output", str(out), *common])
  assert rc == 0
  rep = json.loads(out.read_text())
  m = rep["metrics"]
  assert rep["num_examples"]["reconstruction"] == 4
  assert rep["tokenizer"]["tokens_per_image"] == model.num_tokens
  for k in ("rfid", "psnr", "ssim", "lpips", "codebook/perplexity", "mask/lift",
            "mask/lift_tokens"):
    assert np.isfinite(m[k]), k
  assert m["rfid"] >= 0 and 0 < m["lpips"]
  assert 0 < m["codebook/used_fraction"] <= 1
  assert m["codebook/used_fraction"] + m["codebook/unused_fraction"] == pytest.approx(1.0)
  assert m["codebook/num_tokens"] == 4 * model.num_tokens
  assert m["mask/kept_fraction"] == pytest.approx(model.num_tokens / model.grid ** 2)
  assert os.path.isfile(rep["files"]["mask_figures"])
  printed = capsys.readouterr().out
  assert "codebook/used_fraction" in printed and "rfid" in printed

  # samples vs the same split: reference statistics come from the tokenizer pass's cache
  from maskvq_jax.data.builders.shapes import generate  # pylint: disable=import-outside-toplevel
  samples = np.stack([generate.make_example(7, i, 16, "train")["image"] for i in range(5)])
  np.savez(tmp_path / "samples.npz", images=samples)
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "head.npz", kernel=rng.normal(size=(2048, 1008)) * 0.05)
  out2 = tmp_path / "report_samples.json"
  rc = evaluate.main(["--samples", str(tmp_path / "samples.npz"), "--metrics", "fid,is,pr",
                      "--inception_logits_npz", str(tmp_path / "head.npz"), "--is_splits", "1",
                      "--output", str(out2), *common])
  assert rc == 0
  rep2 = json.loads(out2.read_text())
  m2 = rep2["metrics"]
  assert rep2["num_examples"] == {"samples": 5, "reference": 4}
  assert m2["fid"] > 0 and 1.0 <= m2["is"] <= 1008
  assert 0 <= m2["precision"] <= 1 and 0 <= m2["recall"] <= 1
  assert rep2["files"]["reference_stats"].startswith(cache)
  # --reference_only finds the split's cached statistics (written by the tokenizer pass)
  assert evaluate.main(["--reference_only", *common]) == 0
  assert f"(4 images, cached): {rep2['files']['reference_stats']}" in capsys.readouterr().out


def test_evaluate_cli_errors_are_clear(tmp_path, capsys):
  rc = evaluate.main(["--samples", str(tmp_path), "--metrics", "fid,is",
                      "--output", str(tmp_path / "r.json")])
  assert rc == 2
  assert "--inception_logits_npz" in capsys.readouterr().err
  rc = evaluate.main(["--samples", str(tmp_path), "--metrics", "fid,bogus",
                      "--output", str(tmp_path / "r.json")])
  assert rc == 2 and "unknown ['bogus']" in capsys.readouterr().err
  rc = evaluate.main(["--samples", str(tmp_path), "--metrics", "rfid",
                      "--output", str(tmp_path / "r.json")])
  assert rc == 2 and "evaluate a tokenizer" in capsys.readouterr().err


def test_stage2_workdir_sampling_and_fid(tiny_tokenizer, tmp_path):
  from maskvq_jax.stage2 import sampling  # pylint: disable=import-outside-toplevel
  from maskvq_jax.evaluation import generate  # pylint: disable=import-outside-toplevel
  from maskvq_jax.models.stackformer import Stackformer  # pylint: disable=import-outside-toplevel
  tok_dir, tok_model, tok_vars = tiny_tokenizer
  kw = dict(vocab_size=tok_model.codebook_size + 1, position_size=tok_model.grid ** 2 + 1,
            block_size=tok_model.grid ** 2, d_model=32, n_heads=2, code_layers=1,
            position_layers=1)
  sf = Stackformer(**kw)
  t = jnp.zeros((1, 2), jnp.int32)
  sf_vars = jax.tree.map(np.asarray, nn.meta.unbox(sf.init(jax.random.key(3), t, t, t)))
  ck = checkpointing.Checkpointer(str(tmp_path / "s2" / "checkpoints"), save_every=1,
                                  async_save=False)
  ck.save(5, {"step": np.int32(5), "params": sf_vars["params"]}, force=True,
          meta={"step": 5, "config": {"trainer": "stackformer", "model": kw,
                                      "tokenizer": tok_dir}})
  ck.close()
  model2, vars2, info = checkpoints.load_stage2(str(tmp_path / "s2"))
  assert info["tokenizer"] == tok_dir and model2.codebook_size == tok_model.codebook_size

  cfg = sampling.SamplerConfig(steps=tok_model.num_tokens, top_k=8)
  imgs, timing = generate.sample_images(model2, vars2, tok_model, tok_vars, cfg, num_images=5,
                                        batch_size=8, seed=1)
  assert imgs.shape == (5, 16, 16, 3) and imgs.dtype == np.uint8
  assert timing["tokens_per_s"] > 0 and timing["tokens_per_image"] == tok_model.num_tokens
  again, _ = generate.sample_images(model2, vars2, tok_model, tok_vars, cfg, num_images=5,
                                    batch_size=8, seed=1)
  np.testing.assert_array_equal(imgs, again)  # fixed seed and batch -> same images
  with pytest.raises(ValueError, match="sampler steps=3"):
    generate.sample_images(model2, vars2, tok_model, tok_vars,
                           sampling.SamplerConfig(steps=3), num_images=1, batch_size=8)

  out = tmp_path / "report.json"
  rc = evaluate.main(["--workdir", str(tmp_path / "s2"), "--metrics", "fid", "--num_samples", "4",
                      "--sample_batch_size", "8", "--top_k", "8", "--dataset", "shapes/16",
                      "--source", "procedural", "--num_examples", "4", "--res", "16",
                      "--batch_size", "8", "--stats_cache", str(tmp_path / "cache"),
                      "--save_samples", str(tmp_path / "samples.npz"), "--output", str(out)])
  assert rc == 0
  rep = json.loads(out.read_text())
  assert rep["target"]["kind"] == "stage2" and rep["stage2"]["step"] == 5
  assert rep["metrics"]["fid"] > 0 and rep["metrics"]["sampling/tokens_per_s"] > 0
  assert data.load_npz_images(str(tmp_path / "samples.npz")).shape == (4, 16, 16, 3)


def test_samples_folder_of_shards_reads_global_order_and_ignores_grids(tmp_path):
  """A sampling --out folder: shards of two hosts with interleaved global indices are read in
  index order, PNG grids beside them are not samples, and a repeated index is a clear error."""
  imgs = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
  np.savez(tmp_path / "samples_h00000_00000.npz", images=imgs[[0, 2, 4]], index=[0, 2, 4])
  np.savez(tmp_path / "samples_h00001_00000.npz", images=imgs[[1, 3, 5]], index=[1, 3, 5])
  files.save_png(str(tmp_path / "grid_000.png"), np.zeros((8, 8, 3), np.uint8))
  src, n = data.samples_source(str(tmp_path))
  assert n == 6
  np.testing.assert_array_equal(np.stack([src[i]["image"] for i in range(n)]), imgs)
  plain = tmp_path / "plain"
  plain.mkdir()
  np.savez(plain / "a.npz", images=imgs[:2])
  np.savez(plain / "b.npz", images=imgs[2:5])
  src, n = data.samples_source(str(plain))
  assert n == 5 and np.array_equal(src[4]["image"], imgs[4])
  np.savez(tmp_path / "samples_h00001_00001.npz", images=imgs[:1], index=[3])
  with pytest.raises(ValueError, match="sample index 3 appears twice"):
    data.samples_source(str(tmp_path))
