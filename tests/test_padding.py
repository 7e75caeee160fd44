"""Counts that do not divide the batch shards: padded, the padding dropped, metrics unchanged.

On 8 simulated devices: stage 1 and stage 2 start with eval.batch_size=6 (padded to 8) and stage 2
with sample.num=3 (padded to 8); the eval metrics equal those of the same 6-example batches run
unpadded on one device, and exactly 3 sample images come out. The sampling CLI writes exactly
--num images for a --num and a --batch_size that do not divide the devices, equal to the first
images of a larger unpadded batch.
"""
import functools
import os

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image
import pytest

from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.data import tokens as stage2_data
from maskvq_jax.evaluation import step_metrics
from maskvq_jax.stage1 import trainer as stage1
from maskvq_jax.stage2 import trainer as stage2
import stage1_testlib
import stage2_testlib

stage1_testlib.enable_compile_cache()


def _one_device():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  return NamedSharding(mesh, P("data"))


def _unpadded_batches(it, n):
  """Host numpy batches of an eval iterator on one device (no padding: 1 shard)."""
  out = []
  for _ in range(n):
    b = jax.device_get(next(it))
    assert b[sharding_lib.VALID].all()
    out.append({k: v for k, v in b.items() if k != sharding_lib.VALID})
  return out


def test_helpers():
  assert sharding_lib.padded_size("x", 3, 8, 1) == 8
  assert sharding_lib.padded_size("x", 16, 8, 1) == 16
  assert sharding_lib.padded_size("x", 6, 4, 8) == 8   # hosts count too
  with pytest.raises(ValueError, match="x=0 must be >= 1"):
    sharding_lib.padded_size("x", 0, 8, 1)
  # 6 real rows padded to 8 over 2 hosts: 3 real of 4 each; over 4 hosts 1 or 2 real of 2
  assert [sharding_lib.host_rows(6, 8, i, 2) for i in range(2)] == [(3, 4), (3, 4)]
  assert [sharding_lib.host_rows(6, 8, i, 4) for i in range(4)] == [(1, 2), (2, 2), (1, 2), (2, 2)]
  b = sharding_lib.pad_rows({"x": np.arange(3) + 5}, 4)
  np.testing.assert_array_equal(b["x"], [5, 6, 7, 5])
  np.testing.assert_array_equal(b[sharding_lib.VALID], [True, True, True, False])
  assert not sharding_lib.pad_rows({"x": np.arange(1)}, 2, num_valid=0)[sharding_lib.VALID].any()


def test_to_host_gathers_every_shard_in_order():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  tree = {"x": jax.device_put(x, NamedSharding(mesh, P("data"))),
          "i": jax.device_put(np.arange(8)[::-1].copy(), NamedSharding(mesh, P("data")))}
  host = sharding_lib.to_host(tree)
  assert all(isinstance(v, np.ndarray) for v in host.values())
  np.testing.assert_array_equal(host["x"], x)
  np.testing.assert_array_equal(host["i"], np.arange(8)[::-1])


def test_cli_batch_sizes_are_padded_to_the_devices():
  import argparse  # pylint: disable=import-outside-toplevel
  from maskvq_jax import evaluate, sample  # pylint: disable=import-outside-toplevel
  ns = lambda **kw: argparse.Namespace(**kw)
  assert evaluate._batch(ns(batch_size=5), 100) == 8        # pylint: disable=protected-access
  assert evaluate._batch(ns(batch_size=0), 3) == 8          # pylint: disable=protected-access
  assert sample.batch_size(ns(batch_size=None, num=3), 8) == 8
  assert sample.batch_size(ns(batch_size=None, num=1000), 8) == 64
  assert sample.batch_size(ns(batch_size=12, num=3), 8) == 16


def test_training_batch_error_says_what_to_choose():
  with pytest.raises(ValueError, match=r"input.batch_size=12 .* choose a multiple of 8, e.g. "
                                       r"--config.input.batch_size=8 or 16"):
    stage1.validate_config(stage1_testlib.tiny(**{"input.batch_size": 12}), 8)


def test_stage1_eval_batch_of_6_on_8_devices_equals_unpadded(tmp_path):
  c = stage1_testlib.tiny("steps=2", **{"eval.batch_size": 6, "eval.num_examples": 12,
                                        "eval.every_steps": 2, "eval.image_every_steps": 2,
                                        "eval.num_images": 4})
  out = stage1.train(c, str(tmp_path))
  # the same two batches of 6, unpadded on one device, through the same eval step
  it, n = input_pipeline.eval_iter(c, _one_device())
  assert n == 2
  parts = stage1.build(c)
  step = jax.jit(functools.partial(stage1.eval_step, parts=parts))
  state = jax.device_get(out["state"])
  sums, hist = None, None
  for b in _unpadded_batches(it, n):
    assert b["image"].shape[0] == 6
    s, h, _ = step(state, b, None)
    sums = s if sums is None else jax.tree.map(np.add, sums, s)
    hist = h if hist is None else hist + h
  want = step_metrics.finalize(dict(jax.device_get(sums)), np.asarray(hist))
  assert float(jax.device_get(sums)["count"]) == 12
  assert set(want) == set(out["eval"])
  for k, v in want.items():
    np.testing.assert_allclose(out["eval"][k], v, rtol=2e-5, atol=1e-6, err_msg=k)
  assert any(f.startswith("eval_recon") for f in os.listdir(tmp_path / "images"))


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
  tok = stage2_testlib.make_stage1_workdir(str(tmp_path_factory.mktemp("tok")))
  c = stage2_testlib.tiny(tok, "steps=2", **{"sample.every_steps": 2, "sample.num": 3,
                                             "eval.every_steps": 2, "eval.batch_size": 6,
                                             "eval.num_examples": 12})
  wd = str(tmp_path_factory.mktemp("stage2"))
  return c, wd, stage2.train(c, wd)


def test_stage2_sample_3_and_eval_6_on_8_devices(stage2_run):
  c, wd, out = stage2_run
  assert out["samples"].shape[0] == 3
  pngs = [f for f in os.listdir(os.path.join(wd, "images")) if f.startswith("samples_")]
  assert len(pngs) == 1
  grid = np.asarray(Image.open(os.path.join(wd, "images", pngs[0])))
  np.testing.assert_array_equal(grid[..., :3], stage2.image_grid(out["samples"]))
  # the eval metrics of the same 6-example batches, unpadded on one device
  cfg = out["config"]
  tokenizer, tok_vars, _ = stage2.load_tokenizer(cfg)
  parts = stage2.build(cfg, tokenizer)
  it, n = stage2_data.eval_iter(cfg, _one_device(), need_label=bool(cfg.model.n_classes),
                                text_len=0)
  assert n == 2
  step = jax.jit(functools.partial(stage2.eval_step, parts=parts))
  state = jax.device_get(out["state"])
  sums = None
  for b in _unpadded_batches(it, n):
    m = jax.device_get(step(state, b, tok_vars))
    sums = m if sums is None else {k: sums[k] + m[k] for k in m}
  assert float(sums["count"]) == 12
  want = {k: float(v) / 12 for k, v in sums.items() if k != "count"}
  assert set(want) == set(out["eval"])
  for k, v in want.items():
    np.testing.assert_allclose(out["eval"][k], v, rtol=2e-5, atol=1e-6, err_msg=k)


def test_sample_cli_num_not_dividing_the_devices(stage2_run, tmp_path):
  from maskvq_jax import sample  # pylint: disable=import-outside-toplevel
  _, wd, _ = stage2_run

  def images(out, *flags):
    assert sample.main(["--workdir", wd, "--out", str(out), "--top_k", "4"] + list(flags)) == 0
    z = np.load(str(out / "samples_h00000_00000.npz"))
    return z["images"], z["index"], z["codes"]

  three, idx, codes3 = images(tmp_path / "a", "--num", "3")         # padded to 8
  assert three.shape[0] == 3 and list(idx) == [0, 1, 2]
  full, _, codes16 = images(tmp_path / "b", "--num", "16", "--batch_size", "16")  # unpadded
  np.testing.assert_array_equal(codes3, codes16[:3])
  np.testing.assert_array_equal(three, full[:3])
  five, idx5, codes5 = images(tmp_path / "c", "--num", "5", "--batch_size", "3")  # -> 8
  assert five.shape[0] == 5 and list(idx5) == list(range(5))
  np.testing.assert_array_equal(codes5, codes16[:5])


@pytest.mark.parametrize("processes, shards, batch, num", [
    (1, 1, 8, 12), (2, 4, 8, 16), (4, 4, 8, 12), (4, 4, 2, 16), (4, 8, 3, 12), (3, 6, 8, 20),
    (8, 8, 6, 30)])
def test_eval_examples_do_not_depend_on_the_process_count(monkeypatch, processes, shards, batch,
                                                          num):
  """Global eval batch j holds examples j*B .. (j+1)*B - 1 for every process count: the hosts'
  real rows (simulated processes) put together are exactly one process's batches."""
  cfg = stage1_testlib.tiny("steps=2")
  cfg.eval.batch_size, cfg.eval.num_examples = batch, num
  monkeypatch.setattr(sharding_lib, "shards_of", lambda sharding: shards)
  monkeypatch.setattr(jax, "process_count", lambda: processes)
  per_host = []
  for h in range(processes):
    monkeypatch.setattr(jax, "process_index", lambda h=h: h)
    n, real, rows, idx = input_pipeline.eval_rows(cfg, None, num_total=100)
    assert n == num // batch and idx.shape == (n * max(real, 1),)
    per_host.append(idx.reshape(n, max(real, 1))[:, :real])  # the rows VALID marks real
  for j in range(num // batch):  # batch j, hosts in order: one process's batch j
    np.testing.assert_array_equal(np.concatenate([ix[j] for ix in per_host]),
                                  np.arange(j * batch, (j + 1) * batch))
