"""Device prefetch in data/pipeline.GlobalIterator: same batches, same checkpointed position."""
import jax
import numpy as np
import pytest

from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data import pipeline as input_pipeline
from stage1_testlib import tiny  # tests/ is on sys.path


class _HostIter:
  """A finite host iterator with grain's get_state/set_state."""

  def __init__(self, n, rows=8):
    self.i, self.n, self.rows = 0, n, rows

  def __next__(self):
    if self.i >= self.n:
      raise StopIteration
    self.i += 1
    return {"x": np.full((self.rows, 2), self.i - 1, np.int32)}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, s):
    self.i = s["i"]


def _sharding():
  c = tiny()
  return sharding_lib.batch_sharding(sharding_lib.make_mesh(c.mesh),
                                     sharding_lib.get_rules(c.sharding_rules))


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_prefetch_keeps_order_position_and_end(depth):
  host = _HostIter(6)
  it = input_pipeline.GlobalIterator(host, _sharding(), prefetch=depth)
  got = [int(next(it)["x"][0, 0]) for _ in range(3)]
  assert got == [0, 1, 2]
  assert host.i == min(6, 3 + depth)          # `depth` batches already on the devices
  assert it.get_state() == {"i": 3}           # ...but the position is the next one handed out
  assert [int(b["x"][0, 0]) for b in it] == [3, 4, 5]
  it.set_state({"i": 1})
  assert int(next(it)["x"][0, 0]) == 1


def test_prefetched_batches_are_sharded_global_arrays():
  sh = _sharding()
  b = next(input_pipeline.GlobalIterator(_HostIter(3), sh, prefetch=2))["x"]
  assert isinstance(b, jax.Array) and b.sharding == sh and b.shape == (8, 2)


def test_train_iter_same_sequence_with_and_without_prefetch():
  c0, c2 = tiny(), tiny()
  c0.input.device_prefetch, c2.input.device_prefetch = 0, 2
  sh = _sharding()
  a, b = input_pipeline.train_iter(c0, sh), input_pipeline.train_iter(c2, sh)
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(next(a)["image"]), np.asarray(next(b)["image"]))
  assert b.get_state() == a.get_state()        # the checkpointed position agrees
  resumed = input_pipeline.train_iter(c0, sh)
  resumed.set_state(b.get_state())
  for _ in range(2):
    want = np.asarray(next(b)["image"])
    np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), want)


def test_bench_input_prints_one_json_line(capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("bench_input",
                                                root / "benchmarks" / "bench_input.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.main(["--config", str(root / "configs" / "quickstart.py") + ":tiny", "--batches", "3",
            "--warmup", "1", "--set", "input.device_prefetch=1"])
  lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
  assert len(lines) == 1
  out = json.loads(lines[0])
  assert out["images_per_s"] > 0 and out["host_images_per_s"] > 0
  assert (out["batch_size"], out["res"], out["device_prefetch"]) == (8, 16, 1)
  with pytest.raises(SystemExit, match="unknown field"):
    mod.main(["--set", "input.batchsize=8"])


@pytest.mark.parametrize("bad", [-1, -3])
def test_bad_device_prefetch_is_refused_before_compiling(bad):
  from maskvq_jax.stage1 import trainer  # pylint: disable=g-import-not-at-top
  c = tiny("steps=2")
  with c.unlocked():
    c.input.device_prefetch = bad
  with pytest.raises(ValueError, match=rf"^input.device_prefetch={bad!r} must be an int >= 0"):
    trainer.validate_config(c, jax.device_count())
  c.input.device_prefetch = 0
  trainer.validate_config(c, jax.device_count())
