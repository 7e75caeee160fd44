"""Shared config helpers: `parse_arg` and the stage-1 defaults every MQ-VAE config starts from.

Configs are code (big_vision style): `get_config(arg)` receives the string after the colon in
`--config configs/x.py:keep=0.25,scorer=mlp,runlocal` and turns it into typed fields with
`parse_arg`, so ablations need no new files.
"""
import difflib

import ml_collections as mlc

from maskvq_jax.core.cli import UserError

# The choices of the string arguments (tests/test_cli_errors.py keeps them equal to
# models/masker.SCORERS and core/sharding.RULES, which import jax).
SCORERS = ("conv", "mlp", "random")
SHARDING_RULES = ("dp", "fsdp", "fsdp_tp")


def _choice(*options):
  return (f"one of {', '.join(options)}", lambda v: v in options)


def _at_least(lo):
  return (f">= {lo}", lambda v: v >= lo)


# What every config argument may be, by name, across the configs in this directory: (words for the
# error, test). The type is the default's (bool, int, float or str); a name missing here is checked
# by type only. Only values given on the command line are checked, so a config may default to a
# sentinel outside the range (the stage-2 configs' keep=-1.0: "do not check the tokenizer").
ARG_CHECKS = {
    "keep": ("in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "scorer": _choice(*SCORERS),
    "rules": _choice(*SHARDING_RULES),
    "cond": _choice("class", "text", "none"),
    "batch": _at_least(1),
    "steps": _at_least(1),
    "perceptual": _at_least(0.0),
    "d": _at_least(1),
    "heads": _at_least(1),
    "layers": _at_least(1),
    "fsdp": _at_least(1),
    "model": _at_least(1),
    "stage": ("1 or 2", lambda v: v in (1, 2)),  # configs/repro_small.py
    "down": ("2 or 4", lambda v: v in (2, 4)),   # configs/repro_small.py: downsampling factor
    "gpt": _choice("stackformer", "dense"),      # configs/repro_small.py: the stage-2 model
}
_TYPE_WORDS = {bool: "true or false", int: "an int", float: "a float", str: "a string"}


def _coerce(value: str, default):
  """Parses the string `value` with the type of `default` (bool accepts true/false/1/0/yes/no)."""
  if isinstance(default, bool):
    low = value.strip().lower()
    if low in ("1", "true", "yes", "y", "t", ""):
      return True
    if low in ("0", "false", "no", "n", "f"):
      return False
    raise ValueError(value)
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    out = float(value)
    if out != out:  # nan passes no range check; refuse it here
      raise ValueError(value)
    return out
  return value


def parse_value(key: str, value: str, default):
  """One config argument, type- and range-checked: UserError `key: expected <what>, got 'v'`."""
  words = _TYPE_WORDS.get(type(default), f"a {type(default).__name__}")
  rng, ok = ARG_CHECKS.get(key, ("", lambda v: True))
  if isinstance(default, bool) or not rng:
    expected = words
  else:  # "a float in (0, 1]", "an int >= 1", "one of conv, mlp, random"
    expected = rng if isinstance(default, str) else f"{words} {rng}"
  try:
    out = _coerce(value, default)
  except ValueError:
    raise UserError(f"{key}: expected {expected}, got {value!r}") from None
  if not ok(out):
    raise UserError(f"{key}: expected {expected}, got {value!r}")
  return out


def parse_arg(arg, lazy=False, **spec):
  """Parses `"a=1,b=x,flag"` into a ConfigDict typed after the defaults in `spec`.

  A bare `name` means `name=True`. Values are checked against their default's type and the
  argument's range in ARG_CHECKS; unknown names raise (with close matches) unless `lazy=True`
  (then they are kept as strings). Every mistake is a UserError naming the argument.

  Args:
    arg: the string after the colon of `--config`, or None/"".
    lazy: accept names missing from `spec`.
    **spec: defaults; their types decide how values are parsed.

  Returns:
    ml_collections.ConfigDict with every key of `spec` (plus parsed extras when lazy).
  """
  out = mlc.ConfigDict(dict(spec))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    key = key.strip()
    if "=" not in item:
      value = "true"
    if key in spec:
      out[key] = parse_value(key, value, spec[key])
    elif lazy:
      out[key] = value
    else:
      near = difflib.get_close_matches(key, sorted(spec), n=3, cutoff=0.6)
      hint = f"did you mean {' or '.join(near)}? " if near else ""
      raise UserError(f"unknown config argument {key!r}; {hint}known: {', '.join(sorted(spec))}")
  return out


def loop_defaults(c):
  """Logging / checkpoint cadence shared by the stage-1 and stage-2 configs."""
  c.log_every_steps = 50
  c.ckpt_every_steps = 2000
  c.keep_every_steps = 50_000
  c.max_to_keep = 3
  c.async_checkpointing = True
  c.param_overview = True
  # Workdir lock (maskvq_jax/core/workdir_lock.py): a second trainer on a workdir in use fails.
  c.takeover_lock = False              # True: take over a STALE lock (dead holder); live ones never
  c.lock_timeout_s = 600.0             # no heartbeat for this long = stale; <= 0: dead pid only
  # Several processes with JAX's preemption service off: how often they agree on a SIGTERM (one
  # all-gather on those steps). With the service on (default) the agreement costs nothing per step.
  c.preemption_check_every_steps = 10
  # Persistent XLA compilation cache: "auto" = $MASKVQ_CACHE/xla or ~/.cache/maskvq_jax/xla,
  # "" = off, or a directory / gs:// URL (maskvq_jax/core/compile_cache.py).
  c.compile_cache_dir = "auto"


def stage1_base(*, keep, scorer, dense, batch, res, ch=128, ch_mult=(1, 1, 2, 2)):
  """The authors' stage-1 recipe (configs/stage1/mqvae_imagenet_f8_r30.yml + vqperceptual.py)."""
  c = mlc.ConfigDict()
  c.trainer = "mqvae"
  c.seed = 0
  # Durations: give total_steps, or total_epochs with input.num_train_examples (utils.steps).
  c.total_steps = -1
  c.total_epochs = 50.0
  c.resume = ""                       # a workdir or checkpoints/ dir to start from if workdir is empty

  c.input = mlc.ConfigDict(dict(
      name="imagenet2012", source="tfds", split="train", data_dir="", folder="",
      num_train_examples=1_281_167, batch_size=batch, res=res, augment="crop_flip",
      num_threads=16, prefetch=2, seed_offset=0,
      device_prefetch=2))              # global batches put on the devices ahead of the step
  c.eval = mlc.ConfigDict(dict(
      split="validation", batch_size=batch, num_examples=2048, every_steps=5000, image_every_steps=5000,
      num_images=8, lpips=True))

  grid = res // 2 ** (len(ch_mult) - 1)
  c.model = mlc.ConfigDict(dict(
      resolution=res, in_channels=3, out_channels=3, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=2,
      attn_resolutions=(grid,), z_channels=256, dropout=0.0, scorer=scorer, keep_ratio=keep,
      codebook_size=1024, codebook_dim=256, beta=0.25, ema_decay=0.99, restart_unused_codes=True,
      demasker_layers=8, mask_init_value=0.02, dense=dense))
  # "auto": bfloat16 activations on TPU/GPU, float32 on CPU (core/loop.py resolve_compute_dtype);
  # "float32" / "bfloat16" force one. Parameters and optimizer state are float32 either way.
  c.compute_dtype = "auto"
  c.disc = mlc.ConfigDict(dict(ndf=64, n_layers=3, in_channels=3))
  c.loss = mlc.ConfigDict(dict(
      pixel_weight=1.0, perceptual_weight=1.0, codebook_weight=1.0, disc_weight=0.75,
      disc_weight_max=1.0, disc_factor=1.0, disc_start=0, disc_loss="hinge"))
  c.optim = mlc.ConfigDict(dict(
      base_lr=4.5e-6, lr=-1.0,           # lr < 0: base_lr * global batch (authors' rule)
      b1=0.5, b2=0.9, warmup_epochs=0.1, warmup_steps=-1, min_lr_ratio=0.0, schedule="warmup_cosine",
      disc_lr=-1.0,                      # disc_lr < 0: same as lr (authors)
      grad_accum_steps=1))               # > 1: the batch in that many micro-batches (stage1/trainer.py)
  c.param_ema = 0.0                    # > 0: keep an EMA of the generator params for evaluation
  # The authors' Lightning code runs the whole forward twice per batch (once per optimizer), so the
  # EMA codebook and BatchNorm statistics move twice per batch. 1 = one forward (ours, default);
  # 2 = one extra no-grad forward with the updated generator, whose reconstruction feeds D.
  c.ema_updates_per_step = 1

  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.sharding_rules = "dp"              # dp | fsdp | fsdp_tp (maskvq_jax/core/sharding.py)

  loop_defaults(c)
  c.run_steps = -1                     # > 0: stop this run after that many steps (with a checkpoint)
  c.debug_inject_nan_step = -1         # fault injection for tests: NaN loss at this step
  c.profile = False
  return c


def runlocal(c):
  """Shrinks a stage-1 config to something the CPU trains in minutes (procedural shapes, 32 px)."""
  c.total_steps = 300
  c.input.update(name="shapes", source="procedural", split="train", num_train_examples=4096,
                 batch_size=16, res=32, augment="flip", num_threads=2)
  c.eval.update(split="validation", batch_size=16, num_examples=64, every_steps=100,
                image_every_steps=100, num_images=8)
  keep, scorer, dense = c.model.keep_ratio, c.model.scorer, c.model.dense
  c.model = mlc.ConfigDict(dict(
      resolution=32, in_channels=3, out_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
      attn_resolutions=(), z_channels=64, dropout=0.0, scorer=scorer, keep_ratio=keep,
      codebook_size=64, codebook_dim=32, beta=0.25, ema_decay=0.99, restart_unused_codes=True,
      demasker_layers=2, mask_init_value=0.02, dense=dense))
  c.disc.update(ndf=32, n_layers=2)
  c.optim.update(lr=2e-4, warmup_steps=20)
  c.log_every_steps = 10
  c.ckpt_every_steps = 100
  c.keep_every_steps = 0
  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  return c
