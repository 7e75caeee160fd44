"""Fixed-length, KV-cached sampling for the Stackformer (and the dense GPT baseline).

The authors re-run both transformers over the whole prefix for every code and every position
(two full forwards per step). Here each step feeds ONE token through each transformer with a KV
cache, inside one jitted `lax.scan` of static length K. In eval mode this gives the same logits
as the official full re-forward (tested), at a fraction of the cost.

Per step t (official order, `stackformer_uncond.py` / `stackformer_class.py` `sample`):
  1. code:     logits = Code-Transformer(v_t, p_t)   -> / temperature -> only real codes
               (never sos / class / null tokens) -> top-k -> softmax -> top-p -> sample or argmax.
  2. position: logits = Position-Transformer(h_t + emb(v_{t+1})) -> / temperature -> block used
               positions and the sos position -> top-k -> softmax -> top-p -> sample or argmax.
Classifier-free guidance runs the conditional and unconditional sequences interleaved in one
batch [B * 2] (a reshape, so a batch-sharded input stays sharded) and mixes raw logits as
uncond + s * (cond - uncond), written cond + (s - 1) * (cond - uncond) so s = 1 is exactly cond.

Bad settings raise ValueError in `sample` / `sample_dense` before anything is traced.

A model trained with scan_layers=True (params stacked on a "layers" axis) decodes as its unrolled
clone on the same weights sliced per layer (`unrolled`, once per call, before the loop): the same
function and the same samples, at the unrolled model's speed (decoding the stacked params block
by block re-slices the weights at every step, ~1.6x slower on CPU).
"""
import dataclasses
import functools
import math
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.stackformer import Stackformer, grow_kv_cache
from maskvq_jax.models.transformer import relayout


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampling settings (hashable: part of the jit cache key).

  top_k / top_p = None disable the filter; top_p = 1.0 is treated as disabled too. Positions have
  their own top-k / top-p; position_temperature = None uses the code `temperature` for positions
  too (the official code divides both logits by one temperature), a number sets its own.
  guidance_scale = None: no classifier-free guidance (the value itself is traced, not compiled in).
  weight_dtype = "bfloat16" stores the matmul kernels in bf16 while decoding (activations,
  softmax and accumulation stay in the model dtype): about 1.4x faster on CPU, where one-token
  decoding is bound by reading the weights; logits then differ from f32 by ~3e-3 relative
  (golden model; same greedy tokens).
  cache_buckets = n splits the K steps into n loops with growing static KV-cache lengths
  ceil(K / n), ceil(2K / n), ..., K: step t attends over (and reads) only its bucket's length
  instead of K. The not-yet-written tail gets exactly zero attention either way, so the samples
  are those of one loop (n = 1) up to float rounding of the softmax sums; each bucket is one more
  compiled loop. None picks one bucket per 16 steps, at most 4 (+5-8 % tokens/s on the 2-core CPU
  at K = 64, see BENCHMARKS.md).
  """
  steps: int
  temperature: float = 1.0
  top_k: Optional[int] = None
  top_p: Optional[float] = None
  position_temperature: Optional[float] = None
  position_top_k: Optional[int] = None
  position_top_p: Optional[float] = None
  greedy: bool = False
  force_raster_order: bool = False
  guidance_scale: Optional[float] = None
  weight_dtype: Optional[str] = None
  cache_buckets: Optional[int] = None


class SampleOutput(NamedTuple):
  codes: jax.Array  # [B, K] code indices 0..C-1 (class offset removed).
  positions: jax.Array  # [B, K] grid positions 0..N-1, never repeated.
  code_logits: Optional[jax.Array] = None  # [B, K, V] raw (guided) logits per step.
  position_logits: Optional[jax.Array] = None  # [B, K, P] raw (guided) logits per step.


def position_temperature(config: SamplerConfig) -> float:
  """The temperature applied to position logits: its own if given, else the code temperature."""
  t = config.position_temperature
  return config.temperature if t is None else t


# ----- filters ----------------------------------------------------------------------------------
def apply_guidance(cond, uncond, scale: float):
  """Classifier-free guidance uncond + s (cond - uncond); exactly `cond` for s = 1."""
  return cond + (scale - 1.0) * (cond - uncond)


# Up to this many candidates the running sum is one matmul with a triangular 0/1 matrix: on CPU
# XLA lowers jnp.cumsum to ~20 small reduce-window kernels, a fixed cost paid at every decode step.
_CUMSUM_MATMUL_MAX = 256


def _cumsum(x):
  """Running sum over the last axis (exact float32 dot; every term is a 0/1 multiple)."""
  k = x.shape[-1]
  if k > _CUMSUM_MATMUL_MAX:
    return jnp.cumsum(x, axis=-1)
  upper = jnp.triu(jnp.ones((k, k), x.dtype))  # upper[j, i] = 1 for j <= i.
  return jnp.matmul(x, upper, precision=jax.lax.Precision.HIGHEST)


def nucleus(sorted_probs, top_p: float):
  """Official top-p on descending probs [..., k]: drop tokens after the cumulative sum reaches p.

  The token whose cumulative probability crosses p is kept (the removal mask is shifted right by
  one and the first token is always kept), then the kept mass is renormalised.
  """
  cum = _cumsum(sorted_probs)
  remove = cum >= top_p
  remove = jnp.concatenate([jnp.zeros_like(remove[..., :1]), remove[..., :-1]], axis=-1)
  probs = jnp.where(remove, 0.0, sorted_probs)
  return probs / jnp.sum(probs, axis=-1, keepdims=True)


def candidates(logits, top_k: Optional[int], top_p: Optional[float]):
  """logits [B, V] (blocked entries -inf) -> (probs [B, k], ids [B, k]), descending.

  Official order: top-k, softmax, top-p. Restricting to the k best before the softmax is the same
  distribution as masking the rest with -inf, and lets top-p work on k sorted values instead of
  sorting the whole vocabulary.
  """
  k = logits.shape[-1] if top_k is None else min(top_k, logits.shape[-1])
  vals, ids = jax.lax.top_k(logits, k)
  probs = jax.nn.softmax(vals, axis=-1)
  if top_p is not None and top_p < 1.0:
    probs = nucleus(probs, top_p)
  return probs, ids


def filtered_probs(logits, blocked=None, *, temperature: float = 1.0, top_k=None, top_p=None):
  """Full [B, V] sampling distribution after temperature, blocking (bool [B, V]), top-k, top-p."""
  logits = logits.astype(jnp.float32) / temperature
  if blocked is not None:
    logits = jnp.where(blocked, -jnp.inf, logits)
  probs, ids = candidates(logits, top_k, top_p)
  rows = jnp.arange(logits.shape[0])[:, None]
  return jnp.zeros_like(logits).at[rows, ids].set(probs)


def _pick(key, logits, allowed, *, temperature, top_k, top_p, greedy):
  """One index per row of logits [B, V]; allowed [B, V] bool or None (all allowed)."""
  logits = logits.astype(jnp.float32)
  if greedy:
    if allowed is not None:
      logits = jnp.where(allowed, logits, -jnp.inf)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if allowed is not None:
    logits = jnp.where(allowed, logits, -jnp.inf)
  if top_k is None and (top_p is None or top_p >= 1.0):  # Plain softmax sampling: no sort.
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
  probs, ids = candidates(logits, top_k, top_p)
  choice = jax.random.categorical(key, jnp.log(probs), axis=-1)
  return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


# ----- decode loop ------------------------------------------------------------------------------
_AUTO_BUCKET_STEPS, _AUTO_MAX_BUCKETS = 16, 4


def bucket_stops(steps: int, buckets: Optional[int] = None) -> list:
  """End steps of the KV-cache-length buckets: ceil(i * steps / n) for i = 1..n (n <= steps).

  buckets None: one bucket per 16 steps, at most 4 (short decodes keep a single loop, so they
  compile once).
  """
  if buckets is None:
    buckets = min(_AUTO_MAX_BUCKETS, -(-steps // _AUTO_BUCKET_STEPS))
  n = min(buckets, steps)
  return [-(-i * steps // n) for i in range(1, n + 1)]  # strictly increasing: steps / n >= 1


def _bucketed_scan(step, carry, xs, stops, grow):
  """`lax.scan(step, carry, xs)` over steps 0 .. stops[-1] - 1, one scan per bucket.

  Bucket j runs steps [stops[j - 1], stops[j]); grow(carry, length) pads the carried KV caches to
  the bucket's length before its loop, so each loop is compiled for a static cache length. xs
  (leading axis = step) is sliced per bucket; outputs are concatenated along the step axis.
  """
  outs, start = [], 0
  for stop in stops:
    part = jax.tree.map(lambda x: x[start:stop], xs)  # pylint: disable=cell-var-from-loop
    carry, out = jax.lax.scan(step, grow(carry, stop), part)
    outs.append(out)
    start = stop
  return carry, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


# ----- validation (host side, before tracing) -------------------------------------------------
def _check_filter(prefix, temperature, top_k, top_p, size):
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
      math.isfinite(temperature) and temperature > 0):
    raise ValueError(f"{prefix}temperature must be a finite number > 0, got {temperature!r}")
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or
                            not 1 <= top_k <= size):
    raise ValueError(f"{prefix}top_k must be None or an int in [1, {size}], got {top_k!r}")
  if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or
                            not 0 < top_p <= 1):
    raise ValueError(f"{prefix}top_p must be None or in (0, 1], got {top_p!r}")


def _check_common(config, num_codes, max_steps):
  if not isinstance(config, SamplerConfig):
    raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}")
  if isinstance(config.steps, bool) or not isinstance(config.steps, int) or not (
      1 <= config.steps <= max_steps):
    raise ValueError(f"steps must be an int in [1, {max_steps}], got {config.steps!r}")
  _check_filter("", config.temperature, config.top_k, config.top_p, num_codes)
  buckets = config.cache_buckets
  if buckets is not None and (isinstance(buckets, bool) or not isinstance(buckets, int) or
                              buckets < 1):
    raise ValueError(f"cache_buckets must be None or an int >= 1, got {buckets!r}")
  if config.weight_dtype is not None:
    try:
      ok = jnp.issubdtype(jnp.dtype(config.weight_dtype), jnp.floating)
    except TypeError:
      ok = False
    if not ok:
      raise ValueError(f"weight_dtype must be None or a float dtype, got {config.weight_dtype!r}")


def _batch_size(batch_size, *arrays):
  sizes = {a.shape[0] for a in arrays if a is not None}
  if batch_size is not None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sizes.add(batch_size)
  if len(sizes) != 1:
    raise ValueError(f"cannot infer one batch size: got {sorted(sizes)}")
  return sizes.pop()


def validate_stackformer_sampling(model: Stackformer, config: SamplerConfig, *, labels=None,
                                  text=None, text_mask=None, batch_size=None) -> int:
  """Raises ValueError on any bad setting; returns the batch size."""
  n = model.num_positions
  _check_common(config, model.codebook_size, min(n, model.block_size))
  _check_filter("position_", position_temperature(config), config.position_top_k,
                config.position_top_p, n)
  if config.guidance_scale is not None:
    s = config.guidance_scale
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
      raise ValueError(f"guidance_scale must be None or a finite number, got {s!r}")
    if not ((model.n_classes and model.null_class) or model.text_dim):
      raise ValueError(f"guidance_scale={s!r} needs a model with a null condition "
                       "(n_classes > 0 and null_class=True, or text_dim > 0)")
  if model.n_classes:
    if labels is None or labels.ndim != 1:
      raise ValueError(f"class-conditional sampling needs labels [B], got {labels!r}")
  elif labels is not None:
    raise ValueError("labels given but the model has n_classes=0")
  if model.text_dim:
    if text is None or text_mask is None or text.ndim != 3 or text_mask.shape != text.shape[:2]:
      raise ValueError("text-conditional sampling needs text [B, Lt, text_dim] and text_mask "
                       "[B, Lt]")
    if text.shape[-1] != model.text_dim:
      raise ValueError(f"text feature size {text.shape[-1]} != model.text_dim={model.text_dim}")
  elif text is not None:
    raise ValueError("text given but the model has text_dim=0")
  return _batch_size(batch_size, labels, text)


def decode_params(params, dtype, weight_dtype=None):
  """Casts weights once, before the decode loop (never inside it).

  One-token decoding is bound by reading the weights (26 MB per step in f32 at d 256, 4 + 4
  layers). A non-f32 model `dtype` gets all float params cast once (Flax would otherwise re-cast
  them at every step); `weight_dtype` (e.g. bfloat16) stores only the matmul kernels in lower
  precision: the Dense layers multiply in that dtype and accumulate in `dtype`. Identity when
  both are float32.
  """
  dtype = jnp.dtype(dtype)
  def cast(path, x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if weight_dtype is not None and getattr(path[-1], "key", None) == "kernel":
      return x.astype(weight_dtype)
    return x.astype(dtype) if dtype != jnp.float32 else x
  return jax.tree_util.tree_map_with_path(cast, nn.meta.unbox(params))


def unrolled(model, params):
  """(model, params) in the per-layer layout: a scanned model becomes its scan_layers=False
  clone and its stacked params are sliced per layer (`transformer.relayout`). Identity for an
  unrolled model. Inside the sampler's jit the slices are taken once, outside the decode loop."""
  if not getattr(model, "scan_layers", False):
    return model, params
  return (model.clone(scan_layers=False),
          relayout(nn.meta.unbox(params), model.layer_stacks, scanned=False))


# ----- Stackformer decode -----------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model", "config", "batch_size", "return_logits"))
def _sample_stackformer(params, rng, labels, text, text_mask, guidance_scale, *,
                        model: Stackformer, config: SamplerConfig, batch_size: int,
                        return_logits: bool):
  b, k = batch_size, config.steps
  model, params = unrolled(model, params)
  params = decode_params(params, model.dtype, config.weight_dtype)
  guided = guidance_scale is not None
  b2 = 2 * b if guided else b
  n, offset, c = model.num_positions, model.code_offset, model.codebook_size

  def expand(x):  # [B, ...] -> [B * 2, ...]: (cond, uncond) interleaved per example.
    return jnp.repeat(x, 2, axis=0) if guided else x

  def guide(logits):  # [B2, X] -> [B, X]
    if not guided:
      return logits
    pair = logits.reshape(b, 2, -1)
    return apply_guidance(pair[:, 0], pair[:, 1], guidance_scale)

  if model.n_classes:
    first = labels.astype(jnp.int32)
    if guided:
      first = jnp.stack([first, jnp.full((b,), model.null_class_token, jnp.int32)], 1).reshape(b2)
  else:
    first = jnp.full((b2,), model.sos_token, jnp.int32)
  code_ctx = pos_ctx = None
  if model.text_dim:
    drop = jnp.tile(jnp.array([False, True]), b) if guided else None
    code_ctx, pos_ctx = model.apply(params, expand(text), expand(text_mask), drop,
                                    method=Stackformer.encode_context)
  stops = bucket_stops(k, config.cache_buckets)
  code_cache, pos_cache = model.init_cache(b2, stops[0], model.dtype)
  grid = jnp.arange(n)[None]  # [1, N]
  used = nn.with_logical_constraint(jnp.zeros((b, n), bool), ("batch", None))

  def step(carry, xs):
    code_cache, pos_cache, code, pos, used, last = carry
    t, (key_code, key_pos) = xs
    code_logits, hidden, code_cache = model.apply(
        params, code_cache, code[:, None], pos[:, None], t, code_ctx, method=Stackformer.code_step)
    code_logits = guide(code_logits[:, 0])  # [B, V]
    new_code = offset + _pick(key_code, code_logits[:, offset:offset + c], None,
                              temperature=config.temperature, top_k=config.top_k,
                              top_p=config.top_p, greedy=config.greedy)  # [B]
    pos_logits, pos_cache = model.apply(params, pos_cache, hidden, expand(new_code)[:, None], t,
                                        pos_ctx, method=Stackformer.position_step)
    pos_logits = guide(pos_logits[:, 0])  # [B, P]
    allowed = ~used
    if config.force_raster_order:  # Increasing positions, leaving room for the remaining steps.
      allowed &= (grid > last[:, None]) & (grid <= n - k + t)
    new_pos = _pick(key_pos, pos_logits[:, :n], allowed, temperature=position_temperature(config),
                    top_k=config.position_top_k, top_p=config.position_top_p,
                    greedy=config.greedy)  # [B]
    used = used | (grid == new_pos[:, None])
    out = (new_code - offset, new_pos)
    if return_logits:
      out += (code_logits, pos_logits)
    return (code_cache, pos_cache, expand(new_code), expand(new_pos), used, new_pos), out

  carry = (code_cache, pos_cache, first, jnp.full((b2,), model.sos_position, jnp.int32), used,
           jnp.full((b,), -1, jnp.int32))
  grow = lambda c, length: (grow_kv_cache(c[0], length), grow_kv_cache(c[1], length)) + c[2:]
  ts = jnp.arange(k, dtype=jnp.int32)
  # Step keys for all steps at once, outside the loop (the same keys as splitting fold_in(rng, t)
  # inside it, without a PRNG kernel launch per step).
  keys = jax.vmap(lambda t: jax.random.split(jax.random.fold_in(rng, t)))(ts)  # [K, 2]
  _, outs = _bucketed_scan(step, carry, (ts, (keys[:, 0], keys[:, 1])), stops, grow)
  outs = [jnp.swapaxes(o, 0, 1) for o in outs]  # [K, B, ...] -> [B, K, ...]
  return SampleOutput(*outs)


def sample(model: Stackformer, params, rng, config: SamplerConfig, *, labels=None, text=None,
           text_mask=None, batch_size: Optional[int] = None,
           return_logits: bool = False) -> SampleOutput:
  """Samples K = config.steps (code, position) pairs per example with KV caches.

  Args:
    model: the Stackformer (unbound module).
    params: its variables ({"params": ...}, boxed or plain).
    rng: a PRNG key; step t uses fold_in(rng, t).
    config: SamplerConfig.
    labels: [B] class ids 0..n_classes-1 (class models).
    text, text_mask: [B, Lt, text_dim], [B, Lt] (text models).
    batch_size: needed for unconditional models; otherwise taken from labels / text.
    return_logits: also return the raw per-step logits (before temperature / blocking).

  Call it under `jax.set_mesh(mesh), nn.logical_axis_rules(rules)` to shard the batch.
  """
  labels, text, text_mask = (None if a is None else jnp.asarray(a) for a in (labels, text, text_mask))
  b = validate_stackformer_sampling(model, config, labels=labels, text=text, text_mask=text_mask,
                                    batch_size=batch_size)
  # The guidance scale is traced, not static: sweeping it does not recompile.
  scale = config.guidance_scale
  scale = None if scale is None else jnp.asarray(scale, jnp.float32)
  static = dataclasses.replace(config, guidance_scale=None if scale is None else 1.0)
  return _sample_stackformer(params, rng, labels, text, text_mask, scale, model=model,
                             config=static, batch_size=b, return_logits=return_logits)


# ----- Dense baseline decode --------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model", "config", "batch_size", "return_logits"))
def _sample_dense(params, rng, *, model: DenseGPT, config: SamplerConfig, batch_size: int,
                  return_logits: bool):
  b, k, c = batch_size, config.steps, model.codebook_size
  model, params = unrolled(model, params)
  params = decode_params(params, model.dtype, config.weight_dtype)
  stops = bucket_stops(k, config.cache_buckets)
  cache = model.init_cache(b, stops[0], model.dtype)

  def step(carry, xs):
    cache, code = carry
    t, key = xs
    logits, cache = model.apply(params, cache, code[:, None], t, method=DenseGPT.step)
    logits = logits[:, 0]  # [B, V]
    new_code = _pick(key, logits[:, :c], None,
                     temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                     greedy=config.greedy)
    out = (new_code,) + ((logits,) if return_logits else ())
    return (cache, new_code), out

  carry = (cache, jnp.full((b,), model.sos_token, jnp.int32))
  grow = lambda c, length: (grow_kv_cache(c[0], length),) + c[1:]
  ts = jnp.arange(k, dtype=jnp.int32)
  keys = jax.vmap(lambda t: jax.random.fold_in(rng, t))(ts)  # [K] step keys, outside the loop.
  _, outs = _bucketed_scan(step, carry, (ts, keys), stops, grow)
  codes = jnp.swapaxes(outs[0], 0, 1)
  positions = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  logits = jnp.swapaxes(outs[1], 0, 1) if return_logits else None
  return SampleOutput(codes, positions, logits, None)


def validate_dense_sampling(model: DenseGPT, config: SamplerConfig, *, batch_size: int) -> int:
  """Checks dense-GPT sampling settings without tracing anything; returns the batch size."""
  _check_common(config, model.codebook_size, model.block_size)
  defaults = SamplerConfig(steps=config.steps)
  for name in ("position_temperature", "position_top_k", "position_top_p", "force_raster_order",
               "guidance_scale"):
    if getattr(config, name) != getattr(defaults, name):
      raise ValueError(f"{name}={getattr(config, name)!r} does not apply to the dense GPT")
  return _batch_size(batch_size)


def sample_dense(model: DenseGPT, params, rng, config: SamplerConfig, *, batch_size: int,
                 return_logits: bool = False) -> SampleOutput:
  """Raster-order sampling of config.steps codes (positions are 0..K-1); code filters only."""
  b = validate_dense_sampling(model, config, batch_size=batch_size)
  return _sample_dense(params, rng, model=model, config=config, batch_size=b,
                       return_logits=return_logits)
