"""Real multi-controller runs: 2 processes x 4 CPU devices through jax.distributed on loopback.

Why: the multi-host code paths (per-host data shares, cross-process collectives, replicated eval
sums and image grids, the parameter overview of sharded parameters, agreed preemption, per-process
data positions, multi-process Orbax saves and restores, the CLIs' per-host outputs) only run when
`jax.process_count() > 1`. Every case goes through the real entry point
(`launch/local_multiprocess.sh`) and is compared with a single-process 8-device run of the same
config, number by number:

- stage 1: one run in three launches, each under other sharding rules (Orbax reshards on
  restore): `fsdp_tp` (mesh with a model axis, from a step-0 checkpoint given as `config.resume`;
  parameter overview on) until a SIGTERM to ONE process, `fsdp` until a SIGKILL of both after a checkpoint, `dp` to the end. Evaluation and
  image grids every 2 steps in all of them.
- stage 2 (Stackformer, `fsdp`): the same three launches (SIGTERM to the other process, with the
  preemption service off so the every-N-steps agreement runs), eval and sample grids every 2
  steps.
- token export, `maskvq_jax.sample` and `maskvq_jax.evaluate`: each host writes its share; the
  union equals a 1-process run.

The single-process references read the data the way the two hosts do (`mp_testlib.TwoHostData`).
Stage 1's GAN step turns rounding into chaos within a few steps, so each of its launches is
compared with a 1-process run from the state that launch started from; what is compared, how
tightly, and why a real bug would still fail: mp_testlib ("how a run is compared").
"""
import functools
import glob
import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest

from maskvq_jax import sample as sample_cli
from maskvq_jax import evaluate as evaluate_cli
from maskvq_jax.core import checkpointing
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.core import writers
from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.data import tokens as stage2_data
from maskvq_jax.stage1 import trainer as stage1
from maskvq_jax.stage2 import trainer as stage2
from maskvq_jax.tools import export_tokens
import mp_testlib
from mp_testlib import Launch, committed_steps
import stage1_testlib
import stage2_testlib

stage1_testlib.enable_compile_cache()  # the in-process references only (see mp_testlib.Launch)

TOTAL = 1000  # long enough that no launch ends by itself before it is signalled or killed
EVERY = 2     # eval / image / sample grids cadence
CHECK = 3     # stage 2's preemption_check_every_steps (its agreed step is a multiple of it)
# Eval examples: 12 with the tiny configs' eval batch of 8 is one batch of examples 0-7 in one
# process; each of 2 hosts reading a prefix of its own half evaluated 0-3 and 6-9 instead.
EVAL_EXAMPLES = 12
# The fsdp axis is the outer one where it is used: process 0 holds devices 0-3, so parameters and
# optimizer state are sharded ACROSS the two hosts (not replicated between them).
MESHES = {"fsdp_tp": '(("data",1),("fsdp",4),("model",2))',
          "fsdp": '(("data",1),("fsdp",8),("model",1))',
          "dp": '(("data",-1),("fsdp",1),("model",1))'}


@pytest.fixture(autouse=True)
def _no_stray_processes():
  """A failing test leaves no launch running (it would hold the CPUs and the coordinator port)."""
  yield
  mp_testlib.kill_all()


def _mesh(rules):
  return tuple(tuple(a) for a in eval(MESHES[rules]))  # pylint: disable=eval-used


def _data_item(ckpt_dir, step) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ck = checkpointing.Checkpointer(ckpt_dir, save_every=1, read_only=True)
  return ck.mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data


def _restore(ckpt_dir, step, abstract):
  ck = checkpointing.Checkpointer(ckpt_dir, save_every=1, read_only=True)
  return jax.device_get(ck.restore(step, abstract)[0])


def _preempted_step(launch) -> int:
  """The step both processes saved on the agreed preemption (the same in both logs)."""
  steps = []
  for log in launch.logs():
    m = re.search(r"preempted: checkpoint of step (\d+) written", log)
    assert m, launch.tails()
    steps.append(int(m.group(1)))
  assert steps[0] == steps[1], steps
  return steps[0]


def _kept(root, step) -> str:
  """A checkpoint directory holding only the copy of `root`'s checkpoint `step` (see `_keep`)."""
  return os.path.join(os.path.dirname(root), f"kept_checkpoints_{step}")


def _keep(root, step):
  """Copies checkpoint `step`: the launches' max_to_keep may delete it before the comparisons."""
  shutil.copytree(os.path.join(root, "checkpoints", str(step)),
                  os.path.join(_kept(root, step), str(step)))


def _three_launches(name, root, flags, rules, ckpt_dir, signalled, extras=((), (), ()),
                    killable=lambda s: True):
  """SIGTERM to process `signalled` -> both save one step, exit 0; restart -> SIGKILL after the next
  checkpoint (and once `killable(s)` holds); restart -> 2 more steps. `extras[i]`: more flags of
  launch i. Returns (launches, preempted step, killed-at checkpoint, final step)."""
  try:
    return _three_launches_or_fail(name, root, flags, rules, ckpt_dir, signalled, extras, killable)
  finally:
    mp_testlib.kill_all()  # none is left running, whether the sequence passed or failed


def _three_launches_or_fail(name, root, flags, rules, ckpt_dir, signalled, extras, killable):
  logs = os.path.join(root, "logs")
  l1 = Launch(f"{name}_1", logs, [*flags(rules[0]), *extras[0]], workdir=root)
  l1.wait_for(lambda: 2 in committed_steps(ckpt_dir), "checkpoint 2")
  os.kill(l1.pids()[signalled], signal.SIGTERM)
  assert l1.wait() == 0, l1.tails()
  s = _preempted_step(l1)
  assert max(committed_steps(ckpt_dir)) == s
  _keep(root, s)
  for i, log in enumerate(l1.logs()):
    assert f"process {i}/2, 4 local / 8 global devices (cpu)" in log
    assert f"done: steps 0 -> {s} of {TOTAL} (preempted)" in log, l1.tails()

  l2 = Launch(f"{name}_2", logs, [*flags(rules[1]), *extras[1]], workdir=root)
  l2.wait_for(lambda: max(committed_steps(ckpt_dir)) > s and killable(s),
              f"a checkpoint after step {s}")
  l2.kill()
  k = max(committed_steps(ckpt_dir))
  _keep(root, k)
  for log in l2.logs():
    assert f"restored step {s}" in log and "done:" not in log

  # The SIGKILL left process 0's workdir lock behind: the restart takes the stale lock over.
  l3 = Launch(f"{name}_3", logs, [*flags(rules[2]), "--config.run_steps=2",
                                  "--config.takeover_lock=True", *extras[2]], workdir=root)
  assert l3.wait() == 0, l3.tails()
  for log in l3.logs():
    assert f"restored step {k}" in log and f"done: steps {k} -> {k + 2} of {TOTAL}" in log
  if l3.attempt == 0:
    assert "taking over the stale lock" in l3.logs()[0], l3.tails()
  assert not os.path.exists(os.path.join(root, "workdir.lock"))
  return (l1, l2, l3), s, k, k + 2


def _two_host_iter(real, monkeypatch):
  def make(config, sharding, **kw):
    return mp_testlib.TwoHostData(real, sharding, monkeypatch, config, sharding, **kw)
  return make


def _parse_overview(text: str, title: str) -> dict[str, list[str]]:
  """name -> [shape, dtype, size, mean, std, sharding] of the table logged after `title`."""
  start = text.index(f"{title} parameters:")
  rows = {}
  for line in text[start:].splitlines()[1:]:
    if line.startswith("Total:"):
      break
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and cells[0] != "Name":
      rows[cells[0]] = cells[1:]
  return rows


def _assert_overview_equal(logged: str, want: str, title: str):
  """Same rows, shapes, sizes, means and stds (printed to 3 digits); the sharding column is
  checked by the caller (`want` comes from another mesh)."""
  got, exp = _parse_overview(logged, title), _parse_overview(f"{title} parameters:\n{want}", title)
  assert sorted(got) == sorted(exp) and len(exp) > 5
  for name, (shape, dtype, size, mean, std, _) in exp.items():
    g = got[name]
    assert g[:3] == [shape, dtype, size], (name, g, exp[name])
    for a, b in zip(g[3:5], (mean, std)):
      np.testing.assert_allclose(float(a), float(b), rtol=2e-2, atol=1e-6, err_msg=name)
  return got


def _assert_images_close(got: dict, want: dict, steps):
  for step in steps:
    a, b = got[step].astype(np.int32), want[step].astype(np.int32)
    assert a.shape == b.shape, step
    diff = np.abs(a - b)
    assert np.mean(diff > 2) < 2e-3 and np.mean(diff) < 0.1, (step, diff.max(), np.mean(diff))


# ================================================================================= stage 1
def _compare_stage1(tmp_path, root, s, k, end, monkeypatch):
  """The stage-1 chain (launches ending at steps s, k, end) against single-process references;
  returns what the overview check needs."""
  ckpt_dir = os.path.join(root, "checkpoints")
  # ---- single-process references, fed what the two hosts read (rules: mp_testlib). In the GAN
  # step rounding grows chaotically after ~4 steps, so each launch is compared with a run from the
  # state it started from: the first with an uninterrupted run from step 0 (which also gives the
  # integers of the whole chain), the others with runs restored from the checkpoints they restored.
  tiny = functools.partial(stage1_testlib.tiny, f"steps={TOTAL}",
                           **{"eval.every_steps": EVERY, "eval.image_every_steps": EVERY,
                              "eval.num_examples": EVAL_EXAMPLES})
  monkeypatch.setattr(input_pipeline, "train_iter",
                      _two_host_iter(input_pipeline.train_iter, monkeypatch))
  mp_testlib.restore_two_host_positions(monkeypatch)
  ref_dir = str(tmp_path / "ref")
  config = tiny(ckpt_every_steps=1, max_to_keep=TOTAL, run_steps=end)
  ref = stage1.train(config, ref_dir)
  assert ref["last_step"] == end
  segments = [(0, s, ref_dir, None)]
  for a, b in ((s, k), (k, end)):
    seg_dir = str(tmp_path / f"ref_from_{a}")
    shutil.copytree(_kept(root, a), os.path.join(seg_dir, "checkpoints"))
    r = stage1.train(tiny(ckpt_every_steps=2, run_steps=b - a), seg_dir)
    assert r["last_step"] == b
    segments.append((a, b, seg_dir, r["state"]))

  mesh, rules = sharding_lib.make_mesh(config.mesh), sharding_lib.get_rules("dp")
  create = functools.partial(stage1.create_state, parts=stage1.build(config))
  rng = jax.random.PRNGKey(config.seed)
  abstract, sh = sharding_lib.state_shardings(create, rng, mesh=mesh, rules=rules)
  got = mp_testlib.scalars(root, "train/")
  got_e, got_i = mp_testlib.scalars(root, "eval/"), mp_testlib.pngs(root, "eval_recon")
  evaluated, imaged = set(), set()
  for a, b, seg_dir, seg_state in segments:
    want = {i: v for i, v in mp_testlib.scalars(seg_dir, "train/").items() if a < i <= b}
    assert sorted(want) == list(range(a + 1, b + 1)), (a, b, sorted(want))
    mp_testlib.assert_train_scalars_close(got, want, range(a + 1, b + 1), start=a)
    want_e = {i: v for i, v in mp_testlib.scalars(seg_dir, "eval/").items() if a < i <= b}
    common = sorted(set(got_e) & set(want_e))
    mp_testlib.assert_scalars_close(got_e, want_e, common, rtol=1e-3, atol=1e-5)
    want_i = {i: v for i, v in mp_testlib.pngs(seg_dir, "eval_recon").items() if a < i <= b}
    common_i = sorted(set(got_i) & set(want_i))
    _assert_images_close(got_i, want_i, common_i)
    evaluated, imaged = evaluated | set(common), imaged | set(common_i)
    lr_sum = sum(want[i]["train/lr"] for i in range(a + 1, b + 1))
    ckpt = _kept(root, b) if b < end else ckpt_dir
    want_state = seg_state if seg_state is not None else _restore(
        os.path.join(ref_dir, "checkpoints"), b, abstract)
    mp_testlib.assert_states_close(_restore(ckpt, b, abstract), jax.device_get(want_state), lr_sum)
  # every launch evaluated and drew images, and each was compared
  assert len(evaluated) >= 3 and max(evaluated) == end, (sorted(got_e), sorted(evaluated))
  assert min(imaged) < s < max(imaged) and len(imaged) >= 3, (sorted(got_i), sorted(imaged))
  # the whole chain against the uninterrupted run: integers (steps, rng, Adam's counts) exact
  mp_testlib.assert_states_close(_restore(ckpt_dir, end, abstract), jax.device_get(ref["state"]),
                                 0.0, floats=False)
  return config, mesh, rules, create, rng, sh


def test_stage1_three_rule_sets_sigterm_one_process_kill_resume(tmp_path, monkeypatch):
  root = str(tmp_path / "mp")
  ckpt_dir = os.path.join(root, "checkpoints")
  # The run starts from a step-0 checkpoint of the initial state (`config.resume`, what a fresh run
  # would initialise: same seed), written by this process: compiling the initialisation for the
  # fsdp_tp mesh takes minutes, and the fresh-initialisation path runs in stage 2's first launch.
  init_dir = stage2_testlib.make_stage1_workdir(str(tmp_path / "init"), step=0)

  def flags(rules):
    return ["--config", f"configs/quickstart.py:tiny,perceptual=0,steps={TOTAL},rules={rules}",
            f"--config.mesh={MESHES[rules]}", f"--config.resume={init_dir}",
            "--config.ckpt_every_steps=2",
            f"--config.eval.every_steps={EVERY}", f"--config.eval.image_every_steps={EVERY}",
            f"--config.eval.num_examples={EVAL_EXAMPLES}",
            "--config.param_overview=True", "--alsologtostderr"]

  # The fsdp launch is killed only after an evaluation with image grid (each rule set has one).
  evaluated_after = lambda s: any(step > s for step in mp_testlib.pngs(root, "eval_recon"))
  (l1, _, _), s, k, end = _three_launches("s1", root, flags, ("fsdp_tp", "fsdp", "dp"), ckpt_dir,
                                          signalled=1, killable=evaluated_after)
  # Every process's data position is checkpointed (4 examples per host per step), exactly.
  for step in (s, end):
    assert _data_item(ckpt_dir, step) == {"process_count": 2,
                                          "processes": [{"next_index": 4 * step}] * 2}, step

  config, mesh, rules, create, rng, sh = _compare_stage1(tmp_path, root, s, k, end, monkeypatch)

  # ---- the parameter overview of the fsdp_tp launch (sharded over hosts): process 0 logs the
  # statistics one process computes from the same initial parameters (the trainer's init program,
  # so the compile cache has it)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = jax.jit(lambda r: nn.meta.unbox(create(r)), out_shardings=sh)(rng)
  p0, p1 = l1.logs()
  g = _assert_overview_equal(p0, writers.overview_table(init.params["g"]), "generator")
  _assert_overview_equal(p0, writers.overview_table(init.params["d"]), "discriminator")
  assert any("'fsdp'" in row[5] for row in g.values()), g  # the logged table shows the sharding
  assert "generator parameters:" not in p1 and "done: steps 0" in p1


def test_model_axis_across_processes_is_refused_before_training(tmp_path):
  """2 processes x 1 device with model=2: both hosts would feed their own examples into the same
  (replicated) batch rows; this trained silently to the end (rc 0) before the check."""
  root = str(tmp_path / "tp")
  job = Launch("tp", os.path.join(root, "logs"),
               ["--config", "configs/quickstart.py:tiny,perceptual=0,steps=2,rules=fsdp_tp",
                '--config.mesh=(("data",1),("fsdp",1),("model",2))'],
               workdir=root, env={"DEVICES_PER_PROCESS": "1"})
  assert job.wait() == 2, job.tails()
  for log in job.logs():
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: mesh {'data': 1, 'fsdp': 1, 'model': 2} on 2 processes: batch "
                           "shard 0 of 1") and "keep ['model'] within a process" in last, last
  assert not os.path.exists(os.path.join(root, "checkpoints"))


# ================================================================================= stage 2
@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
  """The 2-process stage-2 run (three launches) and its tokenizer; checked in the test below."""
  base = tmp_path_factory.mktemp("mp2")
  tok = stage2_testlib.make_stage1_workdir(str(base / "stage1"))
  root = str(base / "mp")
  ckpt_dir = os.path.join(root, "checkpoints")

  def flags(rules):
    return ["--config", f"configs/quickstart_stage2.py:tiny,steps={TOTAL},rules={rules}",
            f"--config.tokenizer={tok}", f"--config.mesh={MESHES[rules]}",
            "--config.ckpt_every_steps=2", f"--config.eval.every_steps={EVERY}",
            f"--config.eval.num_examples={EVAL_EXAMPLES}",
            f"--config.sample.every_steps={EVERY}", "--config.param_overview=True",
            # the fallback agreement: a SIGTERM flag all-gathered every CHECK steps
            "--jax_enable_preemption_service=false",
            f"--config.preemption_check_every_steps={CHECK}",
            "--alsologtostderr"]

  # Eval in launches 1 and 3, sample grids in launch 3 (at its last step); the killed launch
  # compiles neither (all three run the same rules, so nothing is left uncovered).
  no_samples, neither = ("--config.sample.every_steps=0",), ("--config.eval.every_steps=0",
                                                              "--config.sample.every_steps=0")
  launches, s, k, end = _three_launches("s2", root, flags, ("fsdp",) * 3, ckpt_dir, signalled=0,
                                        extras=(no_samples, neither, ()))
  return dict(base=str(base), tok=tok, root=root, ckpt_dir=ckpt_dir, launches=launches, s=s, k=k,
              end=end)


def test_stage2_fsdp_sigterm_one_process_kill_resume(stage2_run, monkeypatch):
  r = stage2_run
  s, end = r["s"], r["end"]
  assert s % CHECK == 0  # the all-gather agreement runs on multiples of preemption_check_every
  for step in (s, end):
    assert _data_item(r["ckpt_dir"], step) == {"process_count": 2,
                                               "processes": [{"next_index": 4 * step}] * 2}, step
  assert "stackformer parameters:" in r["launches"][0].logs()[0]

  config = stage2_testlib.tiny(r["tok"], f"steps={TOTAL},rules=fsdp", mesh=_mesh("fsdp"),
                               ckpt_every_steps=2, run_steps=end,
                               **{"eval.every_steps": EVERY, "sample.every_steps": EVERY,
                                  "eval.num_examples": EVAL_EXAMPLES})
  monkeypatch.setattr(stage2_data, "train_iter",
                      _two_host_iter(stage2_data.train_iter, monkeypatch))
  ref_dir = os.path.join(r["base"], "ref")
  ref = stage2.train(config, ref_dir)
  assert ref["last_step"] == end

  got, want = mp_testlib.scalars(r["root"], "train/"), mp_testlib.scalars(ref_dir, "train/")
  assert sorted(want) == list(range(1, end + 1))
  mp_testlib.assert_train_scalars_close(got, want, range(1, end + 1))  # rules: mp_testlib
  got_e, want_e = mp_testlib.scalars(r["root"], "eval/"), mp_testlib.scalars(ref_dir, "eval/")
  common = sorted(set(got_e) & set(want_e))
  assert len(common) >= 2 and common[-1] == end, (sorted(got_e), sorted(want_e))
  mp_testlib.assert_scalars_close(got_e, want_e, common, rtol=1e-4, atol=1e-5)
  got_i, want_i = mp_testlib.pngs(r["root"], "samples"), mp_testlib.pngs(ref_dir, "samples")
  common_i = sorted(set(got_i) & set(want_i))
  assert common_i == sorted(got_i) == [end], (sorted(got_i), sorted(want_i))
  for step in common_i:  # sampled tokens are discrete: equal states give equal grids
    np.testing.assert_array_equal(got_i[step], want_i[step], err_msg=f"samples@{step}")

  parts = stage2.build(ref["config"], stage2.load_tokenizer(config)[0])
  abstract, _ = sharding_lib.state_shardings(
      functools.partial(stage2.create_state, parts=parts), jax.random.PRNGKey(config.seed),
      mesh=sharding_lib.make_mesh(config.mesh), rules=sharding_lib.get_rules("fsdp"))
  lr_sum = sum(want[i]["train/lr"] for i in range(1, end + 1))
  mp_testlib.assert_states_close(_restore(r["ckpt_dir"], end, abstract),
                                 jax.device_get(ref["state"]), lr_sum)


# ================================================================================= CLIs
def _records(out_dir, split):
  files = stage2_data.token_files(out_dir, split)
  src = stage2_data._TokenSource(files, 0, 1)  # pylint: disable=protected-access
  return [src[i] for i in range(len(src))], files


def test_export_tokens_two_processes_equal_one(stage2_run):
  tok, base = stage2_run["tok"], stage2_run["base"]
  args = ["--tokenizer_workdir", tok, "--split", "train", "--num", "32"]
  one = os.path.join(base, "tokens_1")
  assert export_tokens.main([*args, "--out", one, "--batch_size", "16"]) == 0
  two = os.path.join(base, "tokens_2")
  job = Launch("export", os.path.join(base, "logs"), [*args, "--out", two, "--batch_size", "8"],
               module="maskvq_jax.tools.export_tokens")
  assert job.wait() == 0, job.tails()
  (want, _), (got, files) = _records(one, "train"), _records(two, "train")
  assert [os.path.basename(f) for f in files] == [
      f"tokens-0000{i}-of-00002.array_record" for i in range(2)]  # one file per host
  assert len(got) == len(want) == 32
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["codes"], w["codes"])
    np.testing.assert_array_equal(g["positions"], w["positions"])
    assert (g["label"], g["caption"]) == (w["label"], w["caption"])


def _samples(out):
  z = [dict(np.load(p)) for p in sorted(glob.glob(os.path.join(out, "samples_h*.npz")))]
  cat = {k: np.concatenate([d[k] for d in z]) for k in z[0]}
  order = np.argsort(cat["index"])
  return {k: v[order] for k, v in cat.items()}


def test_sample_cli_two_processes_equal_one(stage2_run):
  base, workdir = stage2_run["base"], stage2_run["root"]
  args = ["--workdir", workdir, "--num", "12", "--batch_size", "8", "--top_k", "4", "--seed", "3"]
  one = os.path.join(base, "samples_1")
  assert sample_cli.main([*args, "--out", one]) == 0
  two = os.path.join(base, "samples_2")
  job = Launch("sample", os.path.join(base, "logs"), [*args, "--out", two],
               module="maskvq_jax.sample")
  assert job.wait() == 0, job.tails()
  hosts = {os.path.basename(p)[:14] for p in glob.glob(os.path.join(two, "samples_h*.npz"))}
  assert hosts == {"samples_h00000", "samples_h00001"}  # each host wrote its own rows
  got, want = _samples(two), _samples(one)
  np.testing.assert_array_equal(got["index"], np.arange(12))
  for k in ("index", "codes", "positions", "labels", "images"):
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert json.load(open(os.path.join(two, "sample_info.json")))["num_processes"] == 2


def test_sample_cli_grids_hold_every_host_rows(tmp_path):
  """The PNG grid of a batch shows its first images whichever host holds them: process 0 drew only
  its own 4 of 6 rows before (the .npz shards were right)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  tok = stage2_testlib.make_stage1_workdir(str(tmp_path / "stage1"))
  workdir = str(tmp_path / "stage2")
  stage2.train(stage2_testlib.tiny(tok, "steps=1"), workdir)
  args = ["--workdir", workdir, "--num", "6", "--batch_size", "8", "--top_k", "4", "--seed", "5"]
  one = str(tmp_path / "samples_1")
  assert sample_cli.main([*args, "--out", one]) == 0
  two = str(tmp_path / "samples_2")
  job = Launch("grid", str(tmp_path / "logs"), [*args, "--out", two], module="maskvq_jax.sample")
  assert job.wait() == 0, job.tails()
  np.testing.assert_array_equal(_samples(two)["images"], _samples(one)["images"])
  want = np.asarray(Image.open(os.path.join(one, "grid_000.png")))
  got = np.asarray(Image.open(os.path.join(two, "grid_000.png")))
  assert got.shape == want.shape == (32, 48, 3), (got.shape, want.shape)  # 6 images of 16 px
  np.testing.assert_array_equal(got, want)


def test_evaluate_cli_two_processes_equal_one(stage2_run):
  tok, base = stage2_run["tok"], stage2_run["base"]
  args = ["--workdir", tok, "--metrics", "psnr,ssim,usage,mask", "--batch_size", "8",
          "--num_examples", "12", "--num_figures", "2"]
  one = os.path.join(base, "eval_1", "report.json")
  assert evaluate_cli.main([*args, "--output", one]) == 0
  two = os.path.join(base, "eval_2", "report.json")
  job = Launch("evaluate", os.path.join(base, "logs"), [*args, "--output", two],
               module="maskvq_jax.evaluate")
  assert job.wait() == 0, job.tails()
  got, want = json.load(open(two)), json.load(open(one))
  assert got["settings"]["processes"] == 2 and want["settings"]["processes"] == 1
  assert got["num_examples"] == want["num_examples"]
  assert want["num_examples"]["reconstruction"] == 12
  assert sorted(got["metrics"]) == sorted(want["metrics"]) and len(want["metrics"]) > 5
  for k, v in want["metrics"].items():
    np.testing.assert_allclose(got["metrics"][k], v, rtol=1e-5, atol=1e-7, err_msg=k)
