"""Memory plan (tools/plan.py) and the fsdp promise it rests on, checked on 8 real CPU devices.

Why: the plan computes per-device bytes from shapes and sharding rules on an AbstractMesh; this
test materialises the same state on a real 8-device fsdp mesh, measures every device's bytes from
`addressable_shards`, and requires (a) at most 1/8 + 5 % of the parameter and of the optimizer
bytes per device and (b) the plan's prediction to equal the measurement.
"""
import collections

import flax.linen as nn
import jax
import pytest

from configs import stackformer_ffhq256
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.tools import plan as plan_lib


def _small_stackformer(rules="fsdp"):
  """The FFHQ Stackformer config, shrunk (d 256, 2 + 2 layers; runlocal 32 px tokenizer)."""
  c = stackformer_ffhq256.get_config(f"rules={rules},batch=16")
  c.model.update(d_model=256, n_heads=4, code_layers=2, position_layers=2)
  return c


def test_fsdp_puts_at_most_an_eighth_of_params_and_optimizer_on_each_device():
  c = _small_stackformer()
  c.mesh = (("data", 1), ("fsdp", 8), ("model", 1))
  create, c, _, _ = plan_lib.build_state_fn(c, "configs/mqvae_imagenet256.py:runlocal")
  mesh = sharding_lib.make_mesh(c.mesh)
  rules = sharding_lib.get_rules(c.sharding_rules)
  rng = jax.random.PRNGKey(0)
  _, sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=sh)(rng)

  def per_device(tree):
    out = collections.Counter()
    for leaf in jax.tree.leaves(tree):
      for s in leaf.addressable_shards:
        out[s.device.id] += s.data.nbytes
    return out

  for name, tree in (("params", state.params), ("optimizer", state.opt_state)):
    total = sum(l.nbytes for l in jax.tree.leaves(tree))
    dev = per_device(tree)
    assert len(dev) == 8
    assert max(dev.values()) <= total * (1 / 8 + 0.05), (name, max(dev.values()) / total)

  # The plan (AbstractMesh, no devices) predicts exactly what was measured.
  p = plan_lib.plan(_small_stackformer(), {"data": 1, "fsdp": 8, "model": 1},
                    devices_per_host=8, tokenizer_config="configs/mqvae_imagenet256.py:runlocal")
  measured = per_device({k: v for k, v in vars(state).items() if k != "opt_state"})
  assert p.param_bytes_per_device == max(measured.values())
  assert p.opt_bytes_per_device == max(per_device(state.opt_state).values())


def test_plan_of_paper_models_on_256_devices():
  p = plan_lib.plan(stackformer_ffhq256.get_config("rules=fsdp,batch=256"),
                    {"data": 16, "fsdp": 16, "model": 1})
  assert 300e6 < p.num_params < 315e6                       # the paper's 307M
  assert p.hosts == 64 and p.per_host_batch == 4 and p.per_device_batch == 1
  assert p.param_bytes_per_device * 16 <= p.param_bytes_total * 1.05
  assert p.opt_bytes_per_device * 16 <= p.opt_bytes_total * 1.05
  assert not p.notes
  bad = plan_lib.plan(stackformer_ffhq256.get_config(""), {"data": 16, "fsdp": 16, "model": 1})
  assert bad.param_bytes_per_device == bad.param_bytes_total  # rules=dp: replicated
  assert any("not divisible by the 256 batch shards" in n for n in bad.notes)


def test_plan_notes_a_model_axis_across_hosts():
  """model=8 over hosts of 4 devices: the training would refuse it (test_process_batches.py)."""
  ok = plan_lib.plan(stackformer_ffhq256.get_config("rules=fsdp_tp,batch=256"),
                     {"data": 1, "fsdp": 64, "model": 4})
  assert not any("within a process" in n for n in ok.notes), ok.notes
  bad = plan_lib.plan(stackformer_ffhq256.get_config("rules=fsdp_tp,batch=256"),
                      {"data": 1, "fsdp": 32, "model": 8})
  assert any("keep ['model'] within a process" in n for n in bad.notes), bad.notes


@pytest.mark.parametrize("text,match", [
    ("data=16,fsdp=x", "'fsdp=x' is not name=<positive int>"),
    ("data=16,pipe=2", r"axes \['pipe'\] are not in the config's mesh"),
])
def test_bad_mesh_is_rejected(text, match):
  with pytest.raises(ValueError, match=match):
    plan_lib.parse_mesh(text, stackformer_ffhq256.get_config(""))



LARGE = ("mqvae_imagenet256", "mqvae_ffhq256", "vqgan_imagenet256", "stackformer_ffhq256",
         "stackformer_imagenet256_class", "stackformer_coco_text")


@pytest.mark.parametrize("name", LARGE)
def test_large_configs_start_on_a_32_chip_slice_with_their_pod_slice_args(name):
  path = f"configs/{name}.py"
  assert plan_lib.pod_slice_args(path), f"{path} names no POD_SLICE"
  config, args, sizes = plan_lib.pod_slice(path, {}, 32)
  assert args == plan_lib.pod_slice_args(path)
  p = plan_lib.plan(config, sizes, devices_per_host=4)
  assert not p.notes, p.notes  # nothing keeps it from starting
  if name.startswith("stackformer"):  # 307M+ parameters: sharded, 16-image grids padded
    assert p.rules == "fsdp" and sizes == {"data": 8, "fsdp": 4, "model": 1}
    assert p.param_bytes_per_device * 4 <= p.param_bytes_total * 1.05
    assert any("sample.num=16 runs as 32 rows" in n for n in p.padded), p.padded
  else:
    assert p.rules == "dp" and sizes == {"data": 32, "fsdp": 1, "model": 1}


def test_pod_slice_arguments_given_on_the_command_line_win():
  config, args, sizes = plan_lib.pod_slice("configs/stackformer_ffhq256.py:fsdp=8,batch=512",
                                           {"sample.num": 8}, 64)
  assert args == "rules=fsdp,fsdp=8,batch=512"
  assert sizes == {"data": 8, "fsdp": 8, "model": 1} and config.input.batch_size == 512
  assert config.sample.num == 8


def test_plan_cli_prints_the_pod_slice_rules_and_mesh():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  r = subprocess.run([sys.executable, "-m", "maskvq_jax.tools.plan", "--config",
                      "configs/stackformer_ffhq256.py", "--devices", "32"],
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert ("pod slice of 32 devices: configs/stackformer_ffhq256.py expects --config "
          "configs/stackformer_ffhq256.py:rules=fsdp,fsdp=4,batch=256 -> rules fsdp, mesh "
          "{'data': 8, 'fsdp': 4, 'model': 1}") in r.stdout
  assert "padded: sample.num=16 runs as 32 rows" in r.stdout and "NOTE" not in r.stdout
