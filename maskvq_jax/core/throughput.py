"""Throughput and MFU of a training run: images/s, tokens/s (global and per device), FLOPs, MFU.

`CountedStep` wraps a jitted train step: on its first call it traces, lowers and compiles the step
ahead of time (once: that executable is the one every later call runs) and reads its FLOP count.
`Meter` turns wall time between log points into rates:

  throughput/steps_per_s
  throughput/images_per_s, throughput/images_per_s_per_device       (examples: images)
  throughput/tokens_per_s, throughput/tokens_per_s_per_device       (stage 2: K tokens / image)
  perf/flops_per_step      global FLOPs of one step
  perf/mfu                 FLOPs/s per device / the device's peak dense bf16 FLOP/s

FLOPs: XLA's cost analysis of the compiled (per-device, SPMD-partitioned) executable. It counts a
while-loop body once whatever the trip count, so scanned layers (`nn.scan`) would read as one
layer; the matmul and convolution FLOPs of the step's jaxpr, with scan bodies multiplied by their
length, are counted too, and the larger of the two (per device) is used. Fused kernels that XLA
sees as custom calls (cuDNN / Pallas attention) count as zero in the compiled figure.

Peak FLOP/s: dense bf16 per device, from the vendors' data sheets (`PEAK_BF16_FLOPS`). A device
kind missing from the table (CPU, an unknown accelerator) gets no `perf/mfu`: it is omitted, not
guessed.
"""
import math
import time
from typing import Any, Callable, Optional

from absl import logging
import jax

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


def _conv_flops(eqn) -> float:
  dn = eqn.params["dimension_numbers"]
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  # kernel: in-features per group x spatial taps; each output element costs that many MACs
  spec = dn.rhs_spec  # (out_feature_dim, in_feature_dim, *spatial)
  taps = math.prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
  return 2.0 * math.prod(out) * taps


def _subjaxprs(value):
  for v in (value if isinstance(value, (list, tuple)) else [value]):
    inner = getattr(v, "jaxpr", v)
    if hasattr(inner, "eqns"):
      yield inner


def jaxpr_flops(jaxpr) -> float:
  """Matmul + convolution FLOPs of a (Closed)Jaxpr: scan bodies x length, cond: largest branch."""
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
  xla = compiled_flops(compiled)
  try:
    traced = jaxpr_flops(jaxpr) / _num_devices(compiled)
  except Exception as e:  # pylint: disable=broad-except  # an unusual primitive: keep XLA's figure
    logging.warning("could not count the step's FLOPs from its jaxpr: %s", e)
    traced = 0.0
  if xla is None and not traced:
    return None
  if xla is not None and traced > 1.05 * xla:
    logging.info("FLOPs: XLA counts %.3g per device, the jaxpr %.3g (loops counted once by XLA); "
                 "using the jaxpr's", xla, traced)
  return max(xla or 0.0, traced)


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
