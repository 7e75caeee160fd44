"""Throughput and MFU (core/throughput.py): FLOP counts, the peak table, rates, trainer metrics."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from maskvq_jax.core import throughput
from maskvq_jax.stage1 import trainer as trainer1
from maskvq_jax.stage2 import trainer as trainer2
from stage1_testlib import enable_compile_cache, tiny as tiny1  # tests/ is on sys.path
from stage2_testlib import make_stage1_workdir, tiny as tiny2

enable_compile_cache()


def test_flops_of_a_known_matmul_compiled_and_traced():
  m, k, n = 64, 128, 32
  f = jax.jit(lambda a, b: a @ b)
  a, b = jnp.ones((m, k)), jnp.ones((k, n))
  step = throughput.CountedStep(f)
  np.testing.assert_allclose(np.asarray(step(a, b)), np.full((m, n), k))
  assert throughput.compiled_flops(f.lower(a, b).compile()) == 2 * m * k * n
  assert throughput.jaxpr_flops(f.trace(a, b).jaxpr) == 2 * m * k * n
  assert step.flops_per_device == 2 * m * k * n  # one device runs it all: XLA's count
  assert step.compile_seconds > 0


def test_sharded_matmul_counts_per_device():
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  rows, rep = NamedSharding(mesh, P("d", None)), NamedSharding(mesh, P())
  m, k, n = 8 * jax.device_count(), 64, 16
  f = jax.jit(lambda a, b: a @ b, in_shardings=(rows, rep), out_shardings=rows)
  step = throughput.CountedStep(f)
  out = step(jax.device_put(jnp.ones((m, k)), rows), jax.device_put(jnp.ones((k, n)), rep))
  assert out.sharding == rows
  assert step.flops_per_device == 2 * m * k * n / jax.device_count()


def test_scanned_layers_are_counted_length_times():
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  rows, rep = NamedSharding(mesh, P("d", None)), NamedSharding(mesh, P())
  layers, m, d, n_dev = 6, 4 * jax.device_count(), 32, jax.device_count()
  body = lambda x, w: (jnp.tanh(x @ w), None)
  f = jax.jit(lambda x, ws: jax.lax.scan(body, x, ws)[0], in_shardings=(rows, rep),
              out_shardings=rows)
  x, ws = jax.device_put(jnp.ones((m, d)), rows), jax.device_put(jnp.ones((layers, d, d)), rep)
  xla = throughput.compiled_flops(f.lower(x, ws).compile())
  assert xla < 2 * 2 * m * d * d / n_dev  # XLA counts the loop body once
  step = throughput.CountedStep(f)
  step(x, ws)
  assert step.flops_per_device == pytest.approx(layers * 2 * m * d * d / n_dev)


def test_conv_flops():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))
  f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # per spatial dimension 8 outputs x 3 taps, less the 2 taps that fall on the padding: 22
  assert throughput.jaxpr_flops(jax.make_jaxpr(f)(x, w)) == 2 * (2 * 6) * 4 * 22 * 22


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (2, "VALID"), (2, ((1, 1), (1, 1)))])
def test_conv_flops_forward_and_gradients_match_xla(stride, padding):
  """Strided and padded convolutions and their input / kernel gradients (input-dilated and
  kernel-dilated convolutions): only the taps that meet real input count, as in XLA's analysis."""
  x, w = jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8, 16))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for f in (conv, jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=0),
            jax.grad(lambda x, w: jnp.sum(conv(x, w)), argnums=1)):
    traced = jax.jit(f).trace(x, w)
    convs = [e for e in throughput.live(traced.jaxpr).eqns
             if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 1
    xla = throughput.compiled_flops(traced.lower().compile())
    assert throughput.jaxpr_flops(throughput.live(traced.jaxpr)) == pytest.approx(xla, rel=0.02)


def test_step_flops_do_not_depend_on_scan_or_accumulation():
  """The same work unrolled, scanned, or in accumulated micro-batches: the same FLOPs per step
  (XLA's own count differs: loop bodies once, elementwise work added)."""
  layers, m, d = 4, 16, 32
  block = lambda x, w: jnp.tanh(x @ w) * 2.0 + 1.0

  def unrolled(x, ws):
    for i in range(layers):
      x = block(x, ws[i])
    return x

  scanned = lambda x, ws: jax.lax.scan(lambda h, w: (block(h, w), None), x, ws)[0]
  accumulated = lambda x, ws: jax.lax.map(lambda xm: unrolled(xm, ws), x.reshape(4, m // 4, d)
                                          ).reshape(m, d)
  x, ws = jnp.ones((m, d)), jnp.ones((layers, d, d)) * 0.01
  want = layers * 2 * m * d * d
  for f in (unrolled, scanned, accumulated):
    step = throughput.CountedStep(jax.jit(f))
    np.testing.assert_allclose(np.asarray(step(x, ws)), np.asarray(unrolled(x, ws)), rtol=1e-5)
    assert step.flops_per_device == want, f.__name__


def test_dead_code_is_not_counted():
  """A traced step holds values nothing uses (XLA drops them); they are not FLOPs of the step."""
  m, k, n = 32, 64, 16
  def f(a, b):
    unused = (a @ b) @ b.T  # pylint: disable=unused-variable
    return a @ b
  step = throughput.CountedStep(jax.jit(f))
  step(jnp.ones((m, k)), jnp.ones((k, n)))
  assert throughput.jaxpr_flops(jax.jit(f).trace(jnp.ones((m, k)), jnp.ones((k, n))).jaxpr) > \
      2 * m * k * n  # the trace itself holds the unused products
  assert step.flops_per_device == 2 * m * k * n


def test_jaxpr_flops_of_grad_counts_forward_and_backward():
  f = lambda w, x: jnp.sum(x @ w)
  w, x = jnp.ones((32, 8)), jnp.ones((16, 32))
  fwd = 2 * 16 * 32 * 8
  assert throughput.jaxpr_flops(jax.make_jaxpr(jax.grad(f))(w, x)) == 2 * fwd  # forward + dW


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("cpu", None),
    ("NVIDIA GeForce RTX 4090", None)])
def test_peak_table(kind, peak):
  assert throughput.peak_flops(kind) == peak


class _Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


class _Step:
  flops_per_device = 1e12


def test_meter_rates_and_mfu():
  clock = _Clock()
  m = throughput.Meter(examples_per_step=32, tokens_per_example=256, step_fn=_Step(),
                       num_devices=4, device_kind="TPU v4", clock=clock)
  assert m(10) == {}  # the first call starts the clock (compilation before it)
  clock.t += 5.0
  out = m(20)  # 10 steps in 5 s
  assert out["throughput/steps_per_s"] == 2.0
  assert out["throughput/images_per_s"] == 64.0
  assert out["throughput/images_per_s_per_device"] == 16.0
  assert out["throughput/tokens_per_s"] == 64.0 * 256
  assert out["throughput/tokens_per_s_per_device"] == 16.0 * 256
  assert out["perf/flops_per_step"] == 4e12
  assert out["perf/mfu"] == pytest.approx(2.0 * 1e12 / 275e12)
  clock.t += 100.0  # an evaluation...
  m.mark(20)        # ...is not training time
  clock.t += 1.0
  assert m(22)["throughput/steps_per_s"] == 2.0


def test_mfu_omitted_on_cpu():
  clock = _Clock()
  m = throughput.Meter(examples_per_step=8, step_fn=_Step(), clock=clock)  # this CPU
  assert throughput.peak_flops() is None
  m(0)
  clock.t += 1.0
  out = m(1)
  assert "perf/mfu" not in out and "throughput/tokens_per_s" not in out
  assert out["perf/flops_per_step"] == 1e12 * jax.device_count()


IMAGE_KEYS = {"throughput/steps_per_s", "throughput/images_per_s",
              "throughput/images_per_s_per_device", "perf/flops_per_step"}


def test_stage1_run_logs_throughput(tmp_path):
  out = trainer1.train(tiny1("steps=3"), str(tmp_path))
  m = out["throughput"]  # written to TensorBoard as throughput/*, perf/* (not under train/)
  assert not any(k.startswith(("throughput/", "perf/")) for k in out["train"])
  assert IMAGE_KEYS <= set(m) and "perf/mfu" not in m
  assert m["throughput/images_per_s"] == pytest.approx(8 * m["throughput/steps_per_s"])
  assert m["throughput/images_per_s_per_device"] == pytest.approx(m["throughput/images_per_s"] / 8)
  assert m["perf/flops_per_step"] > 1e6


def test_stage2_run_logs_tokens_per_s(tmp_path):
  tok_dir = make_stage1_workdir(str(tmp_path / "s1"))
  out = trainer2.train(tiny2(tok_dir, "steps=3"), str(tmp_path / "s2"))
  m = out["throughput"]
  assert IMAGE_KEYS <= set(m)
  assert m["throughput/tokens_per_s"] == pytest.approx(32 * m["throughput/images_per_s"])  # K = 32
  assert m["throughput/tokens_per_s_per_device"] == pytest.approx(m["throughput/tokens_per_s"] / 8)
