r"""Scale on paper: per-device memory and per-host batch of a config on a mesh you do not have.

Why: choosing a mesh for a 256-chip pod by trial and error costs pod hours. The train state's
shapes come from `jax.eval_shape` (nothing is allocated) and its shardings from the same logical
rules the trainers use (`maskvq_jax.core.sharding`), laid out on a `jax.sharding.AbstractMesh`, so a
laptop CPU can answer "how many bytes of parameters / optimizer state land on each device of
data=16,fsdp=16?" exactly. Activations depend on XLA's schedule: `--compile` compiles the real
train step on this machine's devices with the per-device batch of the target mesh (the model
replicated on each local device) and reports `compiled.memory_analysis()` temporaries; it takes
minutes for the paper models on a CPU.

  python -m maskvq_jax.tools.plan --config configs/stackformer_ffhq256.py --mesh data=16,fsdp=16
  python -m maskvq_jax.tools.plan --config configs/stackformer_imagenet256_class.py:large \
      --mesh data=32,fsdp=4,model=2 --devices_per_host 4
  python -m maskvq_jax.tools.plan --config configs/mqvae_imagenet256.py --mesh data=256 --compile

`--devices N` instead of `--mesh` plans a pod slice of N chips the way the config expects to run
there: the config file's `POD_SLICE` (config arguments such as "rules=fsdp,fsdp=4,batch=256";
arguments given after the colon win) is applied, and the config's own mesh (its -1 axis filled)
is resolved against N. The plan prints the rules and mesh that gives, and which sample / eval
counts are padded up to the batch shards.

  python -m maskvq_jax.tools.plan --config configs/stackformer_ffhq256.py --devices 32

Stage-2 configs name their tokenizer by path; the plan reads the tokenizer's geometry from a
stage-1 config instead (`--tokenizer_config`, default configs/mqvae_imagenet256.py with the
config's expected keep ratio), so no checkpoint is needed.
"""
import dataclasses
import functools
import math
from typing import Any, Optional

from absl import flags
import flax.linen as nn
import jax
from jax.sharding import AxisType
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from maskvq_jax.core import cli
from maskvq_jax.core import sharding as sharding_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:arg]).",
                                          lock_config=False)
_MESH = flags.DEFINE_string("mesh", None, "Target mesh, e.g. data=16,fsdp=16[,model=1].")
_DEVICES = flags.DEFINE_integer(
    "devices", None, "Instead of --mesh: a pod slice of this many devices, planned with the "
    "config file's POD_SLICE arguments and its own mesh resolved against the count.")
_DEVICES_PER_HOST = flags.DEFINE_integer("devices_per_host", 4,
                                         "Accelerators per host (TPU v4/v5p VM: 4; GPU node: 8).")
_TOKENIZER_CONFIG = flags.DEFINE_string(
    "tokenizer_config", "configs/mqvae_imagenet256.py",
    "Stage-2 only: stage-1 config giving the tokenizer geometry (keep from config.expect).")
_COMPILE = flags.DEFINE_bool("compile", False, "Also compile the train step for activations.")


@dataclasses.dataclass
class Plan:
  """Per-device bytes of a train state on a mesh (from shapes and shardings only)."""
  mesh: dict[str, int]
  num_params: int
  param_bytes_total: int
  param_bytes_per_device: int      # max over devices (shards are equal-sized per leaf)
  opt_bytes_total: int
  opt_bytes_per_device: int
  global_batch: int
  batch_shards: int                # devices the batch is split over
  per_device_batch: float
  hosts: int
  per_host_batch: float
  activation_bytes_per_device: Optional[int] = None
  notes: tuple[str, ...] = ()      # what keeps the config from starting on this mesh
  padded: tuple[str, ...] = ()     # sample / eval counts padded up to the batch shards (fine)
  rules: str = ""


def parse_mesh(text: str, config) -> dict[str, int]:
  """"data=16,fsdp=16" -> {"data": 16, "fsdp": 16, <other config axes>: 1}."""
  out = {}
  for item in text.split(","):
    name, eq, size = item.strip().partition("=")
    if not eq or not size.strip().isdigit() or int(size) < 1:
      raise cli.UserError(f"--mesh={text!r}: {item!r} is not name=<positive int>")
    out[name.strip()] = int(size)
  cfg_axes = [str(n) for n, _ in config.mesh]
  unknown = sorted(set(out) - set(cfg_axes))
  if unknown:
    raise cli.UserError(f"--mesh={text!r}: axes {unknown} are not in the config's mesh {cfg_axes}")
  return {a: out.get(a, 1) for a in cfg_axes}


def abstract_mesh(sizes: dict[str, int]) -> jax.sharding.AbstractMesh:
  return jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes),
                                   axis_types=(AxisType.Auto,) * len(sizes))


def _tokenizer_for(config, tokenizer_config: str):
  """An MQVAE module with the geometry a stage-2 config expects (no checkpoint needed)."""
  from maskvq_jax.models import mqvae as mqvae_lib  # pylint: disable=g-import-not-at-top
  path, _, arg = tokenizer_config.partition(":")
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("plan_tokenizer_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  keep = config.expect.get("keep_ratio", -1.0)
  if keep and keep > 0 and "keep=" not in arg:
    arg = ",".join(a for a in (arg, f"keep={keep}") if a)
  return mqvae_lib.MQVAE(**mod.get_config(arg or None).model.to_dict())


def build_state_fn(config, tokenizer_config: str = _TOKENIZER_CONFIG.default):
  """(create_fn(rng) -> boxed TrainState, resolved config, train_step, parts) for either stage."""
  from maskvq_jax import trainers  # pylint: disable=g-import-not-at-top
  trainer = trainers.get(config.trainer)
  if config.trainer == "stackformer":
    tok = _tokenizer_for(config, tokenizer_config)
    config = trainer.resolve_config(config, tok)
    parts = trainer.build(config, tok)
  else:
    parts = trainer.build(config)
  return functools.partial(trainer.create_state, parts=parts), config, trainer, parts


def _bytes(tree, per_device: bool) -> int:
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if per_device else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def _split(abstract) -> tuple[Any, Any]:
  """(everything but the optimizer, the optimizer state) of a trainer's TrainState."""
  fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
  opt = fields.pop("opt_state")
  return fields, opt


def plan(config, mesh_sizes: dict[str, int], devices_per_host: int = 4,
         tokenizer_config: str = _TOKENIZER_CONFIG.default) -> Plan:
  """The memory plan of `config` on a mesh of `mesh_sizes` (an AbstractMesh: no devices needed)."""
  n_dev = math.prod(mesh_sizes.values())
  if n_dev % devices_per_host:
    raise cli.UserError(f"mesh {mesh_sizes} has {n_dev} devices, not a multiple of "
                     f"devices_per_host={devices_per_host}")
  create, config, _, _ = build_state_fn(config, tokenizer_config)
  mesh = abstract_mesh(mesh_sizes)
  rules = sharding_lib.get_rules(config.sharding_rules)
  with nn.logical_axis_rules(rules):  # no mesh context: jax.set_mesh needs real devices
    boxed = jax.eval_shape(create, jax.random.PRNGKey(0))
  shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  rest, opt = _split(abstract)
  params = abstract.params
  gb = int(config.input.batch_size)
  shards = sharding_lib.batch_size_divisor(mesh, rules)
  hosts = n_dev // devices_per_host
  notes = []
  if gb % shards:
    notes.append(f"input.batch_size={gb} is not divisible by the {shards} batch shards: pick "
                 f"a multiple of {shards} (e.g. --config.input.batch_size={shards * max(1, round(gb / shards))})")
  if gb % hosts:
    notes.append(f"input.batch_size={gb} is not divisible by {hosts} hosts")
  # devices in mesh order, devices_per_host consecutive ones per host (jax.make_mesh on CPU / GPU)
  procs = (np.arange(n_dev) // devices_per_host).reshape(tuple(mesh_sizes.values()))
  problem = sharding_lib.process_batch_problem(tuple(mesh_sizes), procs,
                                               sharding_lib.batch_axes(mesh, rules))
  if problem:
    notes.append(problem)
  padded = []
  counts = [("eval.batch_size", int(config.eval.batch_size))]
  if "sample" in config and config.sample.get("every_steps", 0):
    counts.append(("sample.num", int(config.sample.num)))
  for what, n in counts:
    rows = sharding_lib.padded_size(what, n, shards, hosts)
    if rows != n:
      padded.append(f"{what}={n} runs as {rows} rows on the {shards} batch shards x {hosts} hosts "
                    f"({rows - n} padding rows, dropped)")
  return Plan(mesh=dict(mesh_sizes), num_params=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
              param_bytes_total=_bytes(rest, False), param_bytes_per_device=_bytes(rest, True),
              opt_bytes_total=_bytes(opt, False), opt_bytes_per_device=_bytes(opt, True),
              global_batch=gb, batch_shards=shards, per_device_batch=gb / shards, hosts=hosts,
              per_host_batch=gb / hosts, notes=tuple(notes), padded=tuple(padded),
              rules=str(config.sharding_rules))


def activation_bytes(config, per_device_batch: int,
                     tokenizer_config: str = _TOKENIZER_CONFIG.default) -> int:
  """Temporaries of the real train step compiled for ONE local device at `per_device_batch`.

  The state is replicated on that device (its bytes are reported separately), so XLA's temp
  size is the activation (+ gradient) working set of one device at the target per-device batch.
  """
  config = config.copy_and_resolve_references()
  config.input.batch_size = int(per_device_batch)
  config.mesh = tuple((n, 1) for n, _ in config.mesh)
  create, config, trainer, parts = build_state_fn(config, tokenizer_config)
  mesh = sharding_lib.make_mesh(config.mesh, devices=jax.devices()[:1])
  rules = sharding_lib.get_rules(config.sharding_rules)
  abstract, sh = sharding_lib.state_shardings(create, jax.random.PRNGKey(0), mesh=mesh, rules=rules)
  bsh = sharding_lib.batch_sharding(mesh, rules)
  res = config.input.res
  batch = {"image": jax.ShapeDtypeStruct((int(per_device_batch), res, res, 3), jnp.uint8,
                                         sharding=bsh)}
  if config.trainer == "stackformer":
    raise cli.UserError("--compile is implemented for stage 1 only")
  step = jax.jit(functools.partial(trainer.train_step, parts=parts), donate_argnums=(0,))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = step.lower(abstract, batch, None).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def _gib(n) -> str:
  return f"{n / 2**30:8.3f} GiB"


def format_plan(p: Plan, name: str) -> str:
  lines = [
      f"plan for {name} on mesh {p.mesh} ({math.prod(p.mesh.values())} devices, {p.hosts} hosts), "
      f"rules {p.rules}",
      f"  parameters          {p.num_params / 1e6:10.2f} M",
      f"  params+stats+EMA    total {_gib(p.param_bytes_total)}   per device {_gib(p.param_bytes_per_device)}",
      f"  optimizer state     total {_gib(p.opt_bytes_total)}   per device {_gib(p.opt_bytes_per_device)}",
      f"  state per device    {_gib(p.param_bytes_per_device + p.opt_bytes_per_device)}",
      f"  global batch {p.global_batch} = {p.per_host_batch:g} per host = "
      f"{p.per_device_batch:g} per device ({p.batch_shards} batch shards)",
  ]
  if p.activation_bytes_per_device is not None:
    lines.append(f"  activations (XLA temp, per device) {_gib(p.activation_bytes_per_device)}")
  lines += [f"  padded: {n}" for n in p.padded]
  lines += [f"  NOTE: {n}" for n in p.notes]
  return "\n".join(lines)


def pod_slice_args(path: str) -> str:
  """The config file's POD_SLICE (config arguments for a pod slice), or "" if it has none."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("plan_pod_slice", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return str(getattr(mod, "POD_SLICE", ""))


def merge_args(base: str, given: str) -> str:
  """Config arguments `base` with those in `given` replacing the same names ("a=1,b" style)."""
  items = {}
  for item in f"{base},{given}".split(","):
    if item.strip():
      items[item.partition("=")[0].strip()] = item.strip()
  return ",".join(items.values())


def pod_slice(value: str, overrides: dict, devices: int):
  """(config, arguments used, mesh sizes) of `--config value` on a pod slice of `devices`."""
  path, _, given = value.partition(":")
  args = merge_args(pod_slice_args(path), given)
  config = cli.load_config_file(f"{path}:{args}" if args else path)
  config.update_from_flattened_dict(dict(overrides))
  try:
    names, sizes = sharding_lib.mesh_shape(config.mesh, devices)
  except ValueError as e:
    raise cli.UserError(f"--devices={devices}: {e}") from None
  return config, args, dict(zip(names, sizes))


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or bool(_MESH.value) == (_DEVICES.value is not None):
    raise cli.UserError("--config and one of --mesh or --devices are required")
  config = _CONFIG.value
  name = flags.FLAGS["config"].config_filename
  header = ""
  if _DEVICES.value is not None:
    if _DEVICES.value < 1:
      raise cli.UserError(f"--devices={_DEVICES.value} must be >= 1")
    config, args, sizes = pod_slice(name, config_flags.get_override_values(flags.FLAGS["config"]),
                                    _DEVICES.value)
    path = name.partition(":")[0]
    header = (f"pod slice of {_DEVICES.value} devices: {path} expects "
              f"--config {path}{':' + args if args else ''} -> rules {config.sharding_rules}, "
              f"mesh {sizes}" + ("" if pod_slice_args(path) else
                                 " (the config names no POD_SLICE: its own rules and mesh)"))
    name = f"{path}:{args}" if args else path
  if config.trainer == "stackformer":  # the tokenizer config is a user-given file too
    if _COMPILE.value:
      raise cli.UserError("--compile is implemented for stage 1 only")
    cli.load_config_file(_TOKENIZER_CONFIG.value, "tokenizer_config")
  if _MESH.value:
    sizes = parse_mesh(_MESH.value, config)
  p = plan(config, sizes, _DEVICES_PER_HOST.value, _TOKENIZER_CONFIG.value)
  if _COMPILE.value:
    p.activation_bytes_per_device = activation_bytes(config, math.ceil(p.per_device_batch),
                                                     _TOKENIZER_CONFIG.value)
  if header:
    print(header)
  print(format_plan(p, name))


if __name__ == "__main__":
  cli.run_absl(main, config_flag="config")
