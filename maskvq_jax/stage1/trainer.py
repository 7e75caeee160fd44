"""Stage-1 trainer: MQ-VAE (or the dense VQGAN baseline) with LPIPS + PatchGAN, sharded with jit.

One forward per batch. The generator forward is taken with `jax.vjp`; the reconstruction losses
(L1 + LPIPS) and the discriminator's view of the reconstruction give cotangents at the
reconstruction, and pulling them back gives (a) the two gradients at the decoder's last conv kernel
that the VQGAN adaptive weight needs (XLA prunes everything else from those two pull-backs) and
(b) the full generator gradient. The discriminator forward on the reconstruction is shared by the
generator's GAN loss and the discriminator's hinge loss (magvit's trick), so a step costs one
generator forward + backward, two discriminator forwards + backwards and one LPIPS forward +
backward.

Deliberate deviation from the authors' Lightning code: they run the whole model twice per batch
(once per optimizer), so the EMA codebook and the scorer's BatchNorm statistics move twice per
batch and the discriminator sees the reconstruction of the already-updated generator. We update
them once (`ema_updates_per_step=1`, default). `ema_updates_per_step=2` reproduces the authors'
behaviour with one extra no-grad forward of the updated generator whose reconstruction trains D.

The EMA codebook update and dead-code restarts happen inside the model's "vq_stats" update; under
jit the arrays are global, so counts already cover the whole (sharded) batch.
"""
import dataclasses
import functools
from typing import Any, TYPE_CHECKING

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskvq_jax.core import checkpointing
from maskvq_jax.core import cli
from maskvq_jax.core import files
from maskvq_jax.core import resume_guard
from maskvq_jax.core import workdir_lock
from maskvq_jax.stage1 import losses
from maskvq_jax.models import lpips as lpips_lib
from maskvq_jax.evaluation import step_metrics as metrics_lib
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.core import loop
from maskvq_jax.core import train_loop
from maskvq_jax.core import throughput
from maskvq_jax.models import mqvae as mqvae_lib
from maskvq_jax.models.discriminator import NLayerDiscriminator

if TYPE_CHECKING:  # the step and its construction import neither (benchmarks/gpu_bench.py)
  import ml_collections

DTYPES = loop.DTYPES
NonFiniteLossError = loop.NonFiniteLossError


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any              # {"g": generator, "d": discriminator}
  opt_state: Any           # {"g": ..., "d": ...}
  batch_stats: Any         # {"g": scorer BatchNorm (maybe {}), "d": discriminator BatchNorm}
  vq_stats: Any            # EMA codebook: cluster_size_ema, embed_ema, codebook
  ema_params: Any          # EMA of params["g"] for evaluation, or None
  rng: jax.Array           # uint32 [2]; per step fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class Parts:
  """Everything static the steps close over."""
  cfg: "ml_collections.ConfigDict"
  model: mqvae_lib.MQVAE
  disc: NLayerDiscriminator
  lpips: lpips_lib.LPIPS
  tx_g: optax.GradientTransformation
  tx_d: optax.GradientTransformation
  lr_g: optax.Schedule
  total_steps: int


# ===================================================================== config checks
def validate_config(config, num_devices: int):
  """Rejects a bad config before anything is traced or compiled (ValueError naming the value)."""
  loop.check_run_config(config, num_devices, evaluates=True)  # at the end at least
  mqvae_lib.validate_mqvae_kwargs(**config.model.to_dict())
  if config.model.resolution != config.input.res:
    raise ValueError(f"model.resolution={config.model.resolution} != input.res={config.input.res}")
  losses.d_loss_fn(config.loss.disc_loss)
  if config.ema_updates_per_step not in (1, 2):
    raise ValueError(f"ema_updates_per_step={config.ema_updates_per_step} must be 1 or 2")
  if loop.grad_accum_steps(config) > 1 and config.ema_updates_per_step != 1:
    raise ValueError(f"optim.grad_accum_steps={loop.grad_accum_steps(config)} needs "
                     f"ema_updates_per_step=1, not {config.ema_updates_per_step}")


# ===================================================================== construction
def build(config) -> Parts:
  steps = loop.total_steps(config)
  warm = loop.warmup_steps(config)
  lr = loop.learning_rate(config)
  lr_d = config.optim.disc_lr if config.optim.disc_lr > 0 else lr
  sched_g = loop.schedule(config, lr, steps, warm)
  sched_d = loop.schedule(config, lr_d, steps, warm)
  adam = lambda s: optax.adam(s, b1=config.optim.b1, b2=config.optim.b2)
  dtype = loop.compute_dtype(config)  # "auto": bf16 on TPU/GPU, float32 on CPU
  return Parts(cfg=config, model=mqvae_lib.MQVAE(**config.model.to_dict(), dtype=dtype),
               disc=NLayerDiscriminator(ndf=config.disc.ndf, n_layers=config.disc.n_layers,
                                        dtype=dtype),
               lpips=lpips_lib.LPIPS("vgg16"), tx_g=adam(sched_g), tx_d=adam(sched_d), lr_g=sched_g,
               total_steps=steps)


def create_state(rng, parts: Parts) -> TrainState:
  """Initial (boxed: logical sharding metadata) train state; used under eval_shape and jit."""
  res, c_in = parts.cfg.model.resolution, parts.cfg.model.in_channels
  x = jnp.zeros((2, res, res, c_in), jnp.float32)
  k_g, k_d, k_vq, k_mask, k_state = jax.random.split(rng, 5)
  vg = parts.model.init({"params": k_g, "vq_restart": k_vq, "mask": k_mask}, x, train=False)
  vd = parts.disc.init(k_d, x, train=False)
  params = {"g": vg["params"], "d": vd["params"]}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state={"g": parts.tx_g.init(params["g"]), "d": parts.tx_d.init(params["d"])},
      batch_stats={"g": vg.get("batch_stats", {}), "d": vd["batch_stats"]},
      vq_stats=vg["vq_stats"],
      ema_params=jax.tree.map(jnp.copy, params["g"]) if parts.cfg.param_ema > 0 else None,
      rng=k_state)


def _last_layer(tree, path: str):
  for k in path.split("/"):
    tree = tree[k]
  return tree


# ===================================================================== steps
def _gan_grads(params, stats, x, rngs, df, step, lpips_params, parts: Parts):
  """One generator forward on `x` and everything that needs it: the generator's gradient and the
  discriminator's outputs (with their pull-backs) for the D loss. No parameter is updated."""
  cfg, model, disc = parts.cfg, parts.model, parts.disc
  lc = cfg.loss

  def gen_fwd(gp, bs_g, vq, keys):
    (rec, aux), cols = model.apply(
        {"params": gp, "batch_stats": bs_g, "vq_stats": vq}, x, train=True,
        mutable=["batch_stats", "vq_stats"],
        rngs={"vq_restart": keys[0], "mask": keys[1], "dropout": keys[2]})
    return (rec.astype(jnp.float32), aux["qloss"].astype(jnp.float32)), (aux, cols)

  def d_apply(dp, bs_d, img):
    logits, cols = disc.apply({"params": dp, "batch_stats": bs_d}, img, train=True,
                              mutable=["batch_stats"])
    return logits, cols["batch_stats"]

  # ---- generator forward (the only one) and reconstruction losses
  (rec, qloss), vjp_g, (aux, cols_g) = jax.vjp(
      lambda gp: gen_fwd(gp, stats["g"], stats["vq"], rngs[:3]), params["g"], has_aux=True)

  def nll_fn(r):
    l1 = losses.l1(x, r)
    p = (jnp.mean(parts.lpips(lpips_params, x, r)) if lc.perceptual_weight > 0
         else jnp.zeros((), jnp.float32))
    return lc.pixel_weight * l1 + lc.perceptual_weight * p, (l1, p)

  (nll, (l1, p_loss)), ct_nll = jax.value_and_grad(nll_fn, has_aux=True)(rec)
  if cfg.debug_inject_nan_step >= 0:  # fault injection for the NaN guard's test
    nll = nll * jnp.where(step + 1 == cfg.debug_inject_nan_step, jnp.nan, 1.0)
    ct_nll = ct_nll * jnp.where(step + 1 == cfg.debug_inject_nan_step, jnp.nan, 1.0)
  # Static: with disc_factor 0 the GAN term is zero at every step, so the discriminator is never
  # run (same generator update, D's parameters / Adam state / BatchNorm statistics untouched, GAN
  # metrics zero); the CPU quickstart trains this way.
  gan = float(lc.disc_factor) != 0.0
  zero = jnp.zeros((), jnp.float32)
  dp, bs_d = params["d"], stats["d"]
  g_gan = d_weight = gan_scale = norm_last_nll = norm_last_gan = zero
  ct_rec = ct_nll
  d_out = None
  if gan:
    # ---- discriminator: real first (BatchNorm order as in the authors' D step), then fake
    logits_real, vjp_real, bs_d = jax.vjp(lambda p: d_apply(p, bs_d, x), dp, has_aux=True)
    logits_fake, vjp_fake, bs_d = jax.vjp(lambda p, r: d_apply(p, bs_d, r), dp, rec,
                                          has_aux=True)
    g_gan, ct_logits = jax.value_and_grad(losses.generator_loss)(logits_fake)
    ct_gan = vjp_fake(ct_logits)[1]                                   # d g_gan / d rec

    # ---- adaptive weight from gradients at the decoder's last kernel (pruned pull-backs)
    zero_q = jnp.zeros_like(qloss)
    path = lc.get("last_layer", "decoder/conv_out/kernel")
    g_last_nll = _last_layer(vjp_g((ct_nll, zero_q))[0], path)
    g_last_gan = _last_layer(vjp_g((ct_gan, zero_q))[0], path)
    d_weight = losses.adaptive_weight(g_last_nll, g_last_gan, disc_weight=lc.disc_weight,
                                      max_weight=lc.disc_weight_max)
    gan_scale = d_weight * df
    ct_rec = ct_nll + gan_scale * ct_gan
    norm_last_nll, norm_last_gan = loop.tree_l2(g_last_nll), loop.tree_l2(g_last_gan)
    d_out = (logits_real, vjp_real, logits_fake, vjp_fake)
  (g_grads,) = vjp_g((ct_rec, jnp.full_like(qloss, lc.codebook_weight)))
  loss_g = nll + gan_scale * g_gan + lc.codebook_weight * qloss
  new_stats = {"g": cols_g.get("batch_stats", {}), "vq": cols_g["vq_stats"], "d": bs_d}
  m = {
      "loss/total_g": loss_g, "loss/nll": nll, "loss/l1": l1, "loss/lpips": p_loss,
      "loss/commit": qloss, "loss/g_gan": g_gan, "gan/d_weight": d_weight,
      "gan/disc_factor": df, "codebook/perplexity": aux["perplexity"],
      "codebook/usage": aux["usage"], "grad_norm/g_last_nll": norm_last_nll,
      "grad_norm/g_last_gan": norm_last_gan,
  }
  if not cfg.model.dense:
    m.update(metrics_lib.score_stats(aux["scores"], aux["mask"]))
  return g_grads, new_stats, d_out, m, gen_fwd, d_apply


def _disc_grads(d_out, dp, df, parts: Parts):
  """Hinge (or vanilla) D loss on the logits of `_gan_grads` -> (d_grads, metrics)."""
  zero = jnp.zeros((), jnp.float32)
  if d_out is None:  # no GAN: D untouched
    return jax.tree.map(jnp.zeros_like, dp), {"loss/d": zero, "gan/logits_real": zero,
                                              "gan/logits_fake": zero}
  logits_real, vjp_real, logits_fake, vjp_fake = d_out
  d_loss_fn = losses.d_loss_fn(parts.cfg.loss.disc_loss)
  d_loss, (ct_real, ct_fake) = jax.value_and_grad(
      lambda a, b: df * d_loss_fn(a, b), argnums=(0, 1))(logits_real, logits_fake)
  d_grads = jax.tree.map(jnp.add, vjp_real(ct_real)[0], vjp_fake(ct_fake)[0])
  return d_grads, {"loss/d": d_loss, "gan/logits_real": jnp.mean(logits_real),
                   "gan/logits_fake": jnp.mean(logits_fake)}


def train_step(state: TrainState, batch, lpips_params, *, parts: Parts):
  """One GAN step (one generator forward). Returns (new state, dict of float32 scalars).

  With `optim.grad_accum_steps` = n > 1 the batch is cut into n micro-batches (one scan); the
  generator and discriminator gradients are the means over them and each optimizer updates once.
  What differs from one step on the whole batch: BatchNorm (scorer, discriminator) normalises with
  micro-batch statistics and moves its running averages n times; the EMA codebook moves n times
  (each micro-batch is quantised with the codebook the previous ones updated, restarts draw from
  the micro-batch); the adaptive GAN weight is computed per micro-batch; codebook perplexity /
  usage and score/std are means of micro-batch values. Losses, L1 / LPIPS / GAN gradients of
  the parameters are otherwise means of the same per-example terms.
  """
  cfg = parts.cfg
  lc = cfg.loss
  x = batch["image"].astype(jnp.float32) / 127.5 - 1.0               # [B, H, W, 3] in [-1, 1]
  rngs = jax.random.split(jax.random.fold_in(state.rng, state.step), 6)
  df = jnp.where(state.step >= lc.disc_start, lc.disc_factor, 0.0).astype(jnp.float32)
  stats = {"g": state.batch_stats["g"], "vq": state.vq_stats, "d": state.batch_stats["d"]}
  dp = state.params["d"]
  n = loop.grad_accum_steps(cfg)
  if n == 1:
    g_grads, stats, d_out, m, gen_fwd, d_apply = _gan_grads(
        state.params, stats, x, rngs, df, state.step, lpips_params, parts)
  else:
    def micro(st, xm, i):
      keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(rngs)
      g, st, d_out, mm, _, _ = _gan_grads(state.params, st, xm, keys, df, state.step,
                                          lpips_params, parts)
      dg, md = _disc_grads(d_out, dp, df, parts)
      return st, ({"g": g, "d": dg}, {**mm, **md})
    stats, grads, m = loop.accumulate(micro, stats, loop.microbatches(x, n), n)
    g_grads = grads["g"]

  # ---- generator update
  upd, opt_g = parts.tx_g.update(g_grads, state.opt_state["g"], state.params["g"])
  new_g = optax.apply_updates(state.params["g"], upd)
  if cfg.ema_updates_per_step == 2:  # authors: second forward with the updated generator
    (rec2, _), (_, cols2) = gen_fwd(new_g, stats["g"], stats["vq"], rngs[3:])
    stats = dict(stats, g=cols2.get("batch_stats", {}), vq=cols2["vq_stats"])
    if d_out is not None:
      logits_fake, vjp_fake, bs_d = jax.vjp(
          lambda p, r: d_apply(p, stats["d"], r), dp, jax.lax.stop_gradient(rec2), has_aux=True)
      d_out = (d_out[0], d_out[1], logits_fake, vjp_fake)
      stats["d"] = bs_d

  # ---- discriminator update
  new_d, opt_d = dp, state.opt_state["d"]
  norm_d = jnp.zeros((), jnp.float32)
  gan = float(lc.disc_factor) != 0.0
  if n == 1:
    d_grads, md = _disc_grads(d_out, dp, df, parts)
    m = {**m, **md}
  else:
    d_grads = grads["d"]
  if gan:
    upd_d, opt_d = parts.tx_d.update(d_grads, state.opt_state["d"], dp)
    new_d = optax.apply_updates(dp, upd_d)
    norm_d = loop.tree_l2(d_grads)

  ema = state.ema_params
  if ema is not None:
    dcy = cfg.param_ema
    ema = jax.tree.map(lambda e, q: e * dcy + (1.0 - dcy) * q, ema, new_g)

  new_state = state.replace(
      step=state.step + 1, params={"g": new_g, "d": new_d}, opt_state={"g": opt_g, "d": opt_d},
      batch_stats={"g": stats["g"], "d": stats["d"]}, vq_stats=stats["vq"], ema_params=ema)
  m = dict(m, **{"grad_norm/g": loop.tree_l2(g_grads), "grad_norm/d": norm_d,
                 "param_norm/g": loop.tree_l2(new_g), "lr": parts.lr_g(state.step)})
  return new_state, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), m)


def eval_step(state: TrainState, batch, lpips_params, *, parts: Parts):
  """Sums of reconstruction metrics, the code histogram, and the first `eval.num_images` images,
  over the batch's real rows (`VALID`; padding rows change no metric and are never shown).

  Everything it returns is small; the trainer replicates it (jit out_shardings), so every process
  can fetch it whatever the number of hosts.
  """
  x = batch["image"].astype(jnp.float32) / 127.5 - 1.0
  params = state.ema_params if state.ema_params is not None else state.params["g"]
  rec, aux = parts.model.apply({"params": params, "batch_stats": state.batch_stats["g"],
                                "vq_stats": state.vq_stats}, x, train=False,
                               rngs={"mask": jax.random.key(0)})  # scorer="random" draws from it
  rec = rec.astype(jnp.float32)
  dist = parts.lpips(lpips_params, x, jnp.clip(rec, -1, 1)) if lpips_params is not None else None
  valid = batch.get(sharding_lib.VALID, jnp.ones((x.shape[0],), bool))  # False: padding rows
  sums = metrics_lib.reconstruction_sums(x, rec, lpips_dist=dist, valid=valid)
  if "mask" in batch and not parts.cfg.model.dense:
    sums.update(metrics_lib.object_coverage_sums(aux["mask"], batch["mask"], valid))
  hist = metrics_lib.code_histogram(aux["codes"], parts.cfg.model.codebook_size, valid)
  k = max(1, min(int(parts.cfg.eval.num_images), int(parts.cfg.eval.batch_size)))
  first_real = jnp.argsort(jnp.logical_not(valid).astype(jnp.int32), stable=True)[:k]
  shown = {"x": x, "rec": rec, "scores": aux["scores"], "mask": aux["mask"]}
  return sums, hist, {n: v[first_real] for n, v in shown.items()}


def make_train_step(parts: Parts, state_sh, batch_sh, repl) -> throughput.CountedStep:
  """`train_step` jitted with the run's shardings (state donated), compiled once ahead of time
  on its first call with its FLOP count; `fn(state, batch, lpips_params) -> (state, metrics)`."""
  return throughput.CountedStep(jax.jit(
      functools.partial(train_step, parts=parts), in_shardings=(state_sh, batch_sh, repl),
      out_shardings=(state_sh, repl), donate_argnums=(0,)))


# ===================================================================== run helpers
def evaluate(state, parts, eval_fn, config, batch_sharding, lpips_params):
  """Eval metrics and the images to show; `eval_fn`'s outputs are replicated, so every process
  fetches them (a batch-sharded output spans other hosts' devices)."""
  from maskvq_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  it, n = input_pipeline.eval_iter(config, batch_sharding)
  sums, hist, shown = None, None, None
  for i in range(n):
    s, h, vis = eval_fn(state, next(it), lpips_params)
    sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    hist = h if hist is None else hist + h
    if i == 0:
      shown = vis
  sums, hist = jax.device_get((sums, hist))
  return metrics_lib.finalize(dict(sums), np.asarray(hist)), jax.device_get(shown)


# ===================================================================== train
def train(config: "ml_collections.ConfigDict", workdir: str) -> dict:
  """Trains (or resumes) stage 1 in `workdir`. Returns a summary dict (used by tests).

  Holds the workdir's lock for the whole run (core/workdir_lock.py).
  """
  # outside the loop a SIGTERM ends the run with status 143 and the lock released (core/loop.py)
  with loop.exit_on_sigterm(), workdir_lock.hold(workdir, config):
    return _train(config, workdir)


def _train(config: "ml_collections.ConfigDict", workdir: str) -> dict:
  from maskvq_jax.core import writers  # pylint: disable=g-import-not-at-top  # imports TF via CLU
  from maskvq_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top

  with cli.user_input(ValueError):  # the user's config: one `error:` line, not a traceback
    validate_config(config, jax.device_count())
    mesh = sharding_lib.make_mesh(config.mesh)
    rules = sharding_lib.get_rules(config.sharding_rules)
    sharding_lib.check_process_batches(mesh, rules)  # every host feeds its own rows
  input_pipeline.SKIPPED.reset()  # the metric counts this run's skipped images only
  # the evaluation runs at the end of training even when eval.every_steps is 0
  sharding_lib.padded_size("eval.batch_size", config.eval.batch_size,
                           sharding_lib.batch_size_divisor(mesh, rules), note=True)
  parts = build(config)
  total = parts.total_steps
  logging.info("mesh %s, rules %s, %d steps", dict(mesh.shape), config.sharding_rules, total)

  rng = jax.random.PRNGKey(config.seed)
  create = functools.partial(create_state, parts=parts)
  abstract, state_sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  batch_sh = sharding_lib.batch_sharding(mesh, rules)
  repl = sharding_lib.replicated(mesh)
  logging.info("state shardings: %s", sharding_lib.spec_summary(state_sh))

  workdir = files.makedirs(workdir)  # absolute if local; a URL (gs://...) stays a URL
  ckpt = checkpointing.Checkpointer(
      files.join(workdir, "checkpoints"), save_every=config.ckpt_every_steps,
      max_to_keep=config.max_to_keep, keep_every=config.keep_every_steps,
      async_save=config.async_checkpointing)
  data = input_pipeline.train_iter(config, batch_sh)

  # ---- resume order: workdir -> config.resume -> scratch
  state = loop.restore_or_create(ckpt, abstract, config.resume, data, create, rng, mesh, rules, state_sh,
                                 check=resume_guard.checker(config))
  first = int(jax.device_get(state.step))

  lp_params = None
  if config.loss.perceptual_weight > 0 or config.eval.lpips:
    lp_params = jax.device_put(parts.lpips.load_params(), repl)
  step_fn = make_train_step(parts, state_sh, batch_sh, repl)
  meter = throughput.Meter(examples_per_step=config.input.batch_size, step_fn=step_fn)
  eval_fn = jax.jit(functools.partial(eval_step, parts=parts),
                    in_shardings=(state_sh, batch_sh, repl), out_shardings=repl)

  writer = writers.Writer(workdir, total_steps=total, log_every=config.log_every_steps,
                          profile=config.get("profile", False))
  if first == 0 and config.get("param_overview", True):  # every process: a sharded reduction
    writer.parameter_overview(state.params["g"], "generator")
    writer.parameter_overview(state.params["d"], "discriminator")
  writer.hparams({"num_params/g": loop.num_params(state.params["g"]),
                  "num_params/d": loop.num_params(state.params["d"])})

  def run_eval(step, state):
    out, shown = evaluate(state, parts, eval_fn, config, batch_sh, lp_params)
    writer.scalars(step, {f"eval/{k}": v for k, v in out.items()})
    if loop.itstime(step, config.eval.image_every_steps, total):
      k = config.eval.num_images
      writer.images(step, {"eval/recon": writers.recon_grid(
          shown["x"][:k], shown["rec"][:k],
          None if config.model.dense else shown["scores"][:k],
          None if config.model.dense else shown["mask"][:k])})
    return out

  return train_loop.run(
      config=config, state=state, first=first, total=total, step_fn=step_fn,
      step_args=(lp_params,), data=data, mesh=mesh, rules=rules, ckpt=ckpt, writer=writer,
      meter=meter, meta=lambda step: loop.run_meta(config, step, mesh),
      console=("loss/total_g", "loss/l1", "loss/lpips", "loss/commit", "loss/d"),
      extra_metrics=lambda: {"data/skipped_images": input_pipeline.SKIPPED.value},
      periodic=[train_loop.Periodic("eval", config.eval.every_steps, run_eval, initial={})])
