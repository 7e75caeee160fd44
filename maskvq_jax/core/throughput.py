"""Throughput and MFU of a training run: images/s, tokens/s (global and per device), FLOPs, MFU.

`CountedStep` wraps a jitted train step: on its first call it traces, lowers and compiles the step
ahead of time (once: that executable is the one every later call runs) and reads its FLOP count.
`Meter` turns wall time between log points into rates:

  throughput/steps_per_s
  throughput/images_per_s, throughput/images_per_s_per_device       (examples: images)
  throughput/tokens_per_s, throughput/tokens_per_s_per_device       (stage 2: K tokens / image)
  perf/flops_per_step      global FLOPs of one step
  perf/mfu                 FLOPs/s per device / the device's peak dense bf16 FLOP/s

FLOPs: the matmul and convolution FLOPs of the step's jaxpr, after dead-code elimination (what
the compiled program computes: the trace also holds values nothing uses, which XLA drops; the
stage-1 GAN step's trace held 2.6x the FLOPs it runs), with scan bodies multiplied by their length
and convolutions counting only the kernel taps that meet the (unpadded, undilated) input, as XLA
does. That figure is the same whether the layers are scanned or unrolled and with or without
gradient accumulation; XLA's cost analysis of the compiled executable is not (it counts a
while-loop body once whatever the trip count, and adds elementwise work), so it is only the
fallback when the jaxpr gives nothing. Remat's recomputed forward passes are counted (they run).
Fused kernels that the jaxpr holds as opaque calls (cuDNN / Pallas attention) count as zero.

Peak FLOP/s: dense bf16 per device, from the vendors' data sheets (`PEAK_BF16_FLOPS`). A device
kind missing from the table (CPU, an unknown accelerator) gets no `perf/mfu`: it is omitted, not
guessed.
"""
import math
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
from jax.interpreters import partial_eval as pe

# (substring of the lower-cased `device_kind`, dense bf16 FLOP/s per device); first match wins.
PEAK_BF16_FLOPS = (
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v5litepod", 197e12),
    ("tpu v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
    ("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h100", 989e12),
    ("h200 nvl", 835e12), ("h200", 989e12),
    ("a100", 312e12),
)


def peak_flops(device_kind: Optional[str] = None) -> Optional[float]:
  """Dense bf16 FLOP/s of one device of `device_kind` (default: this process's), or None."""
  kind = (device_kind if device_kind is not None else jax.devices()[0].device_kind).lower()
  for pattern, flops in PEAK_BF16_FLOPS:
    if pattern in kind:
      return flops
  return None


# ------------------------------------------------------------------ FLOP counts
def compiled_flops(compiled) -> Optional[float]:
  """FLOPs of one call of a `jax.stages.Compiled` (per device for a partitioned program)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per executable
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  del lb
  rhs_free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
  return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _valid_taps(size: int, kernel: int, out: int, stride: int, pad_lo: int, lhs_dil: int,
                rhs_dil: int) -> int:
  """(output position, kernel tap) pairs of one spatial dimension that read a real input element
  (not padding, not a zero inserted by input dilation)."""
  span = (size - 1) * lhs_dil
  count = 0
  for k in range(kernel):
    first = k * rhs_dil - pad_lo  # input position (dilated coordinates) of output 0, tap k
    for o in range(out):
      q = first + o * stride
      if 0 <= q <= span and q % lhs_dil == 0:
        count += 1
  return count


def _conv_flops(eqn) -> float:
  """2 x (out batch x out features) x in-features per group x the valid taps over all outputs."""
  p, dn = eqn.params, eqn.params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  n = len(dn.lhs_spec) - 2
  lhs_dil = p.get("lhs_dilation") or (1,) * n
  rhs_dil = p.get("rhs_dilation") or (1,) * n
  taps = 1
  for i in range(n):
    taps *= _valid_taps(lhs[dn.lhs_spec[2 + i]], rhs[dn.rhs_spec[2 + i]], out[dn.out_spec[2 + i]],
                        p["window_strides"][i], p["padding"][i][0], lhs_dil[i], rhs_dil[i])
  return 2.0 * out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]] * taps


def _subjaxprs(value):
  for v in (value if isinstance(value, (list, tuple)) else [value]):
    inner = getattr(v, "jaxpr", v)
    if hasattr(inner, "eqns"):
      yield inner


def live(jaxpr):
  """`jaxpr` (a Jaxpr or ClosedJaxpr) without the equations no output depends on."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]


def jaxpr_flops(jaxpr) -> float:
  """Matmul + convolution FLOPs of a (Closed)Jaxpr: scan bodies x length, cond: largest branch.

  Every equation counts: pass `live(jaxpr)` for what a compiled program of it computes.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "cond":
      total += max((jaxpr_flops(b) for b in eqn.params["branches"]), default=0.0)
    else:
      inner = sum(jaxpr_flops(j) for v in eqn.params.values() for j in _subjaxprs(v))
      total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


class CountedStep:
  """A jitted step compiled ahead of time on its first call (in the caller's mesh context).

  Later calls run that executable. Should a call's arguments ever not fit it (another sharding or
  shape), the step falls back to the jitted function, which recompiles as jit always does.
  `flops_per_device` is known after the first call (None where nothing could be counted).
  """

  def __init__(self, jitted):
    self._jitted = jitted
    self._compiled = None
    self.flops_per_device: Optional[float] = None
    self.compile_seconds: Optional[float] = None

  def __call__(self, *args):
    if self._compiled is None:
      t = time.perf_counter()
      traced = self._jitted.trace(*args)
      self._compiled = traced.lower().compile()
      self.compile_seconds = time.perf_counter() - t
      self.flops_per_device = _flops_per_device(self._compiled, traced.jaxpr)
    if self._compiled is False:
      return self._jitted(*args)
    try:
      return self._compiled(*args)
    except (TypeError, ValueError) as e:  # raised while checking the arguments, before running
      logging.warning("train step arguments no longer match the compiled step (%s); using jit", e)
      self._compiled = False
      return self._jitted(*args)


def _num_devices(compiled) -> int:
  """Devices the executable runs on (from its argument and result shardings)."""
  shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
  return max([len(s.device_set) for s in shardings if hasattr(s, "device_set")], default=1)


def _flops_per_device(compiled, jaxpr) -> Optional[float]:
  """The live jaxpr's matmul + convolution FLOPs per device; XLA's count where that gives none."""
  try:
    traced = jaxpr_flops(live(jaxpr)) / _num_devices(compiled)
  except Exception as e:  # pylint: disable=broad-except  # an unusual primitive: XLA's figure
    logging.warning("could not count the step's FLOPs from its jaxpr: %s", e)
    traced = 0.0
  if traced:
    return traced
  return compiled_flops(compiled)


# ------------------------------------------------------------------ rates
class Meter:
  """Rates between log points. Call `meter(step)` at each log (right after the metrics fetch, a
  sync point); `mark(step)` after work that is not training (evaluation, checkpoint, samples)
  restarts the clock so that it is not counted. The first call only starts the clock (the steps
  before it include compilation)."""

  def __init__(self, *, examples_per_step: int, tokens_per_example: int = 0,
               step_fn: Any = None, num_devices: Optional[int] = None,
               device_kind: Optional[str] = None, clock: Callable[[], float] = time.perf_counter):
    self.examples_per_step = int(examples_per_step)
    self.tokens_per_example = int(tokens_per_example)
    self.step_fn = step_fn
    self.num_devices = int(num_devices or jax.device_count())
    self.peak = peak_flops(device_kind)
    self._clock = clock
    self._t: Optional[float] = None
    self._step: Optional[int] = None

  def mark(self, step: int):
    self._t, self._step = self._clock(), int(step)

  def __call__(self, step: int) -> dict:
    now, last_t, last_step = self._clock(), self._t, self._step
    self._t, self._step = now, int(step)
    if last_t is None or step <= last_step or now <= last_t:
      return {}
    sps = (step - last_step) / (now - last_t)
    ex = sps * self.examples_per_step
    out = {"throughput/steps_per_s": sps, "throughput/images_per_s": ex,
           "throughput/images_per_s_per_device": ex / self.num_devices}
    if self.tokens_per_example:
      tok = ex * self.tokens_per_example
      out.update({"throughput/tokens_per_s": tok,
                  "throughput/tokens_per_s_per_device": tok / self.num_devices})
    flops = getattr(self.step_fn, "flops_per_device", None)
    if flops:
      out["perf/flops_per_step"] = flops * self.num_devices
      if self.peak:
        out["perf/mfu"] = flops * sps / self.peak
    return out
