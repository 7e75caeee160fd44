"""The small reproduction (`launch/repro_small.sh`): one budget for every variant, and the whole
pipeline at its tiny size end to end (dataset, six tokenizers, three stage-2 models, evaluation,
report), then a re-run that redoes nothing. Needs the emoji font (skips without it, naming the
install command; fails instead under MASKVQ_REQUIRE_EMOJI_FONT=1, as in CI). A run root given as
a URL (`fake://`, tests/fake_remote.py) keeps the journal, the runs and the report under it, with
stand-in trainers and evaluations."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

import fake_remote  # tests/ is on sys.path (rootdir conftest)
from configs import repro_small as cfg
from maskvq_jax.data.builders.emoji import glyphs
from maskvq_jax.tools import repro_small
from stage1_testlib import enable_compile_cache

enable_compile_cache()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_script_is_valid_bash_with_the_tiny_knob():
  script = os.path.join(ROOT, "launch", "repro_small.sh")
  subprocess.run(["bash", "-n", script], check=True)
  text = open(script).read()
  assert "REPRO_TINY" in text and "maskvq_jax.tools.repro_small" in text
  assert "launch/setup_env.sh" in text and "fonts-noto-color-emoji" in text


def test_every_variant_gets_the_same_budget():
  base = cfg.get_config("keep=0.25")
  shared = lambda c: (c.total_steps, c.input.batch_size, c.input.name, c.seed, c.model.ch,
                      c.model.codebook_size, c.model.codebook_dim, c.model.num_res_blocks,
                      c.optim.lr, c.loss.perceptual_weight, c.loss.disc_factor)
  assert shared(base) == (cfg.STAGE1_STEPS, cfg.STAGE1_BATCH, "emoji/32", 0, 32, cfg.CODEBOOK, 32,
                          1, 5e-4, 0.0, 0.0)
  models = {}
  for name, arg in repro_small.STAGE1:
    c = cfg.get_config(arg)
    assert shared(c) == shared(base), name
    m = c.model
    models[name] = (m.dense, m.keep_ratio if not m.dense else 1.0, m.scorer, tuple(m.ch_mult))
  assert models == {"dense": (True, 1.0, "conv", (1, 2)),
                    "adaptive_k0.5": (False, 0.5, "conv", (1, 2)),
                    "adaptive_k0.25": (False, 0.25, "conv", (1, 2)),
                    "random_k0.25": (False, 0.25, "random", (1, 2)),
                    "mlp_k0.25": (False, 0.25, "mlp", (1, 2)),
                    "dense_f4": (True, 1.0, "conv", (1, 2, 2))}
  s2 = {name: cfg.get_config(arg) for name, _, arg in repro_small.STAGE2}
  same = lambda c: (c.total_steps, c.input.batch_size, c.seed, c.model.d_model, c.model.n_heads,
                    c.model.code_layers, c.model.position_layers, c.optim.lr, c.model.resid_dropout)
  assert same(s2["stackformer_k0.25"]) == same(s2["dense_gpt"]) == same(s2["dense_gpt_f4"])
  assert {n: c.trainer for n, c in s2.items()} == {
      "stackformer_k0.25": "stackformer", "dense_gpt": "dense_gpt", "dense_gpt_f4": "dense_gpt"}
  assert {n: t for n, t, _ in repro_small.STAGE2} == {
      "stackformer_k0.25": "adaptive_k0.25", "dense_gpt": "dense", "dense_gpt_f4": "dense_f4"}
  with pytest.raises(ValueError, match=r"down: expected an int 2 or 4, got '3'"):
    cfg.get_config("down=3")


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_and_resume(tmp_path):
  try:
    glyphs.find_font()
  except FileNotFoundError as e:
    if os.environ.get("MASKVQ_REQUIRE_EMOJI_FONT", "0") != "0":
      pytest.fail(str(e))
    pytest.skip(f"{e} (the small reproduction renders the emoji dataset)")
  root, out = str(tmp_path / "rs"), str(tmp_path / "report")
  assert repro_small.main(["--root", root, "--tiny", "--report_dir", out]) == 0
  for f in ("README.md", "metrics.json", "metrics_vs_keep.png", "reconstructions.png",
            "samples.png", "mask_adaptive.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  md = open(os.path.join(out, "README.md")).read()
  for name, _ in repro_small.STAGE1:  # every number in the row comes from the run's report
    rep = json.load(open(os.path.join(out, "reports", f"stage1_{name}.json")))
    row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
    assert f"| {rep['metrics']['rfid']:.2f} | {rep['metrics']['lpips']:.4f} | " \
           f"{rep['metrics']['psnr']:.2f} |" in row, (name, row)
  for name, _, _ in repro_small.STAGE2:
    rep = json.load(open(os.path.join(out, "reports", f"stage2_{name}.json")))
    assert rep["metrics"]["fid"] > 0 and rep["metrics"]["sampling/images_per_s"] > 0
    assert rep["num_examples"]["samples"] == 16
  assert "n/a" not in md.split("## The paper's claims")[0]
  commands = open(os.path.join(root, "commands.txt")).read()
  assert len(re.findall(r"python -m maskvq_jax.main ", commands)) == 9
  assert len(re.findall(r"python -m maskvq_jax.evaluate ", commands)) == 9
  assert "$ROOT/stage2/dense_gpt" in md and "--config.tokenizer=$ROOT/stage1/dense" in md

  before = json.load(open(os.path.join(root, "timings.json")))
  assert repro_small.main(["--root", root, "--tiny", "--report_dir", out]) == 0
  after = json.load(open(os.path.join(root, "timings.json")))
  trained = [k for k in before if k.startswith(("stage1/", "stage2/", "eval/"))]
  assert len(trained) == 18
  assert {k: after[k]["runs"] for k in trained} == {k: 1 for k in trained}  # nothing redone


def test_random_mask_tokenizer_can_be_evaluated():
  """The random-mask ablation draws its scores from a "mask" key at evaluation too: the
  evaluator's reconstruction fn supplies a fixed one (kept fraction exactly the keep ratio)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from maskvq_jax.evaluation import recon  # pylint: disable=import-outside-toplevel
  from maskvq_jax.models import MQVAE  # pylint: disable=import-outside-toplevel
  model = MQVAE(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=64,
                keep_ratio=0.25, codebook_size=8, codebook_dim=8, demasker_layers=1,
                scorer="random")
  x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  v = nn.meta.unbox(model.init({"params": jax.random.key(1), "mask": jax.random.key(2)},
                               x.astype(np.float32) / 127.5 - 1))
  fn = jax.jit(recon.make_recon_fn(model, {"psnr", "mask"}))
  out = fn({"tokenizer": v}, {"image": x})
  again = fn({"tokenizer": v}, {"image": x})
  np.testing.assert_array_equal(np.asarray(out["mask"]), np.asarray(again["mask"]))
  np.testing.assert_array_equal(np.asarray(out["mask"]).sum(1), [16] * 4)  # 25 % of 8 x 8
  assert len({tuple(np.flatnonzero(m)) for m in np.asarray(out["mask"])}) == 4


def test_claims_read_each_comparison_from_its_own_rows():
  """Each claim line names both numbers and says agrees / does not agree from them alone
  (hand-made rows: the Stackformer better than the dense 256-token GPT, worse than the 8 x 8)."""
  from maskvq_jax.tools import repro_report  # pylint: disable=import-outside-toplevel
  s1 = [{"run": "adaptive_k0.25", "rfid": 120.0, "lpips": 0.2, "tokens_per_image": 64},
        {"run": "random_k0.25", "rfid": 150.0, "lpips": 0.1, "tokens_per_image": 64},
        {"run": "dense_f4", "rfid": 110.0, "tokens_per_image": 64},
        {"run": "adaptive_k0.5", "rfid": 100.0, "tokens_per_image": 128}]
  s2 = [{"run": "stackformer_k0.25", "fid": 190.0, "sampling/images_per_s": 100.0},
        {"run": "dense_gpt", "fid": 200.0, "sampling/images_per_s": 25.0},
        {"run": "dense_gpt_f4", "fid": 180.0, "tokens_per_image": 64}]
  lines = repro_report.claims({"stage1": s1, "stage2": s2})
  assert lines == [
      "- Adaptive mask beats a random mask at the same keep ratio (paper Tab. 6): rFID "
      "`adaptive_k0.25` 120 vs `random_k0.25` 150 -> **agrees**.",
      "  - the same, by LPIPS: LPIPS `adaptive_k0.25` 0.2 vs `random_k0.25` 0.1 -> "
      "**does not agree**.",
      "- At the same 64 tokens per image, masking a finer grid beats a coarser dense grid: rFID "
      "`adaptive_k0.25` 120 vs `dense_f4` 110 -> **does not agree**.",
      "- Keeping more regions reconstructs better (0.5 vs 0.25): rFID `adaptive_k0.5` 100 vs "
      "`adaptive_k0.25` 120 -> **agrees**.",
      "- Stage 2 on fewer tokens is as good (the paper: better): FID Stackformer 190.00 vs dense "
      "GPT 200.00 -> **agrees**.",
      "- Stage 2 on fewer tokens samples faster: 100.00 vs 25.00 images/s (4.00x) -> **agrees**.",
      "- At the same 64 tokens per image, the Stackformer on the masked finer grid generates "
      "better than a raster GPT on the dense coarser grid (the paper's stage-2 comparison): FID "
      "Stackformer 190.00 vs `dense_gpt_f4` 180.00 -> **does not agree**."]
  s2[2].pop("fid")
  assert repro_report.claims({"stage1": s1, "stage2": s2})[-1].endswith(
      "dense coarser grid: not measured yet (FID).")


# ----- a URL run root ----------------------------------------------------------------------------
URL_ROOT = "fake://bkt/rs"
STAGE1_TOKENS = {"dense": (1.0, 64), "adaptive_k0.5": (0.5, 32), "adaptive_k0.25": (0.25, 16),
                 "random_k0.25": (0.25, 16), "mlp_k0.25": (0.25, 16), "dense_f4": (1.0, 16)}
STAGE2_TOKENS = {"stackformer_k0.25": (0.25, 16), "dense_gpt": (1.0, 64),
                 "dense_gpt_f4": (1.0, 16)}


def _stage1_metrics(i):  # hand-made, different per run
  return {"rfid": 30.0 + 7.25 * i, "lpips": 0.125 + 0.0625 * i, "psnr": 15.5 + i,
          "ssim": 0.5 + 0.0312 * i, "codebook/used_fraction": 0.25 + 0.125 * i,
          "codebook/perplexity": 3.5 + i}


def _stage2_metrics(i):
  return {"fid": 150.25 + 11.5 * i, "sampling/images_per_s": 9.5 - 2 * i,
          "sampling/tokens_per_s": 1000.0 - 100 * i}


class _StandIns:
  """Trainer / evaluation / dataset stand-ins: they record what they were given and leave what a
  finished one leaves (a checkpoint at the last step holding the run's config; the evaluation
  report with hand-made numbers, samples and the mask figure)."""

  def __init__(self):
    self.trained, self.evaluated, self.built, self.grids = [], [], [], []

  def train(self, config, workdir):
    from maskvq_jax.core import checkpointing  # pylint: disable=import-outside-toplevel
    from maskvq_jax.core import files  # pylint: disable=import-outside-toplevel
    self.trained.append((workdir, config.get("tokenizer", ""), config.input.data_dir))
    ck = checkpointing.Checkpointer(files.join(workdir, "checkpoints"), save_every=1,
                                    async_save=False)
    ck.save(config.total_steps, {"w": np.zeros(2, np.float32)}, force=True, meta={
        "step": config.total_steps, "config": json.loads(config.to_json_best_effort())})
    ck.close()
    return {"finished": True, "last_step": config.total_steps,
            "total_steps": config.total_steps}

  def evaluate(self, args):
    from maskvq_jax.core import files  # pylint: disable=import-outside-toplevel
    from maskvq_jax.data import runs  # pylint: disable=import-outside-toplevel
    from maskvq_jax.evaluation import report as report_lib  # pylint: disable=import-outside-toplevel
    self.evaluated.append(args)
    loc = runs.describe(args.workdir)  # the stand-in trainer's checkpoint, read back by URL
    name = files.basename(args.workdir)
    rep = report_lib.new_report({"kind": loc.kind, "path": args.workdir, "step": loc.step})
    rep["settings"] = dict(vars(args))
    if loc.kind == "stage1":
      keep, tokens = STAGE1_TOKENS[name]
      rep["metrics"] = _stage1_metrics(list(STAGE1_TOKENS).index(name))
      if name == "adaptive_k0.25":
        files.save_png(files.join(args.workdir, "evaluation", "figures", "mask_grid.png"),
                       np.full((4, 12, 3), 200, np.uint8))
    else:
      keep, tokens = STAGE2_TOKENS[name]
      rep["metrics"] = _stage2_metrics(list(STAGE2_TOKENS).index(name))
      files.save_npz(args.save_samples, images=np.full((16, 16, 16, 3), 9, np.uint8))
    rep["tokenizer"] = {"keep_ratio": keep, "tokens_per_image": tokens}
    report_lib.write(files.join(args.workdir, "evaluation", "report.json"), rep)

  def prepare(self, name, *, data_dir):
    self.built.append((name, data_dir))
    split = type("Split", (), {"num_examples": 20})
    return type("Builder", (), {"info": type("Info", (), {"splits": {"validation": split}})})

  def reconstruction_grid(self, rows, path):
    from maskvq_jax.core import files  # pylint: disable=import-outside-toplevel
    self.grids.append(path)
    return files.save_png(path, np.zeros((4, 4, 3), np.uint8)), [r["run"] for r in rows]


def test_a_url_root_keeps_runs_journal_and_report_under_it(tmp_path, monkeypatch):
  """`run(fake://...)`: every file lands under the URL (the fake bucket's directory), never under
  the working directory; trainers, evaluations and the journaled commands get the URLs unchanged;
  a second run rewrites the journal without duplicates and redoes nothing; the report reads the
  hand-made evaluation numbers (and the runs' stored configs) back from the URL."""
  from maskvq_jax import evaluate as evaluate_cli  # pylint: disable=import-outside-toplevel
  from maskvq_jax import trainers  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import build  # pylint: disable=import-outside-toplevel
  from maskvq_jax.tools import repro_report  # pylint: disable=import-outside-toplevel
  fake = _StandIns()
  monkeypatch.setattr(trainers, "get", lambda name: fake)
  monkeypatch.setattr(evaluate_cli, "run", fake.evaluate)
  monkeypatch.setattr(build, "prepare", fake.prepare)
  monkeypatch.setattr(repro_report, "reconstruction_grid", fake.reconstruction_grid)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv("MASKVQ_CACHE", str(tmp_path / "cache"))
  tfds_dir = str(tmp_path / "cache" / "tfds")  # ArrayRecord: the dataset stays local
  bucket = tmp_path / "bucket"
  local = bucket / "bkt" / "rs"  # where fake://bkt/rs lives
  r = URL_ROOT
  with fake_remote.mounted(str(bucket)):
    out = repro_small.run(r, r + "/report", tiny=True)
    commands = (local / "commands.txt").read_text()
    timings = json.loads((local / "timings.json").read_text())
    n_trained, n_evaluated = len(fake.trained), len(fake.evaluated)
    assert repro_small.run(r, r + "/report", tiny=True) == out
  assert list(cwd.rglob("*")) == []
  assert out["markdown"] == r + "/report/README.md" and out["samples"] == r + "/report/samples.png"

  # what the stand-ins were given: the URLs, unchanged
  assert fake.built == [("emoji/16", tfds_dir)] * 2  # built (found built) on each run
  stage1 = {n: f"{r}/stage1/{n}" for n, _ in repro_small.STAGE1}
  assert fake.trained[:6] == [(wd, "", tfds_dir) for wd in stage1.values()]
  assert fake.trained[6:] == [(f"{r}/stage2/{n}", stage1[tok], tfds_dir)
                              for n, tok, _ in repro_small.STAGE2]
  assert [(a.workdir, a.stats_cache, a.save_samples) for a in fake.evaluated] == [
      (wd, r + "/cache", None) for wd in stage1.values()] + [
      (f"{r}/stage2/{n}", r + "/cache", f"{r}/stage2/{n}/evaluation/samples.npz")
      for n, _, _ in repro_small.STAGE2]
  assert fake.grids == [r + "/report/reconstructions.png"] * 2

  # the journal: every command once, with the URLs as given; the rerun rewrote it unchanged
  lines = commands.splitlines()
  assert len(lines) == len(set(lines)) == 20
  assert f"python -m maskvq_jax.main --config configs/repro_small.py:stage=2,gpt=dense,data_dir=" \
         f"{tfds_dir},tiny --workdir {r}/stage2/dense_gpt --config.tokenizer={r}/stage1/dense" in lines
  assert f"python -m maskvq_jax.evaluate --workdir {r}/stage1/dense --metrics " \
         f"{repro_small.STAGE1_METRICS} --split validation --num_examples 16 --stats_cache " \
         f"{r}/cache --num_figures 8" in lines
  assert lines[-1] == f"python -m maskvq_jax.tools.repro_report --root {r} --out {r}/report"
  assert "fake:/bkt" not in commands and str(cwd) not in commands  # no URL made a local path
  assert (local / "commands.txt").read_text() == commands
  assert (n_trained, n_evaluated) == (len(fake.trained), len(fake.evaluated)) == (9, 9)
  again = json.loads((local / "timings.json").read_text())
  assert {k: v["runs"] for k, v in again.items()} == {
      k: 2 if k == "dataset" else 1 for k in timings}
  meta = json.loads((local / "run.json").read_text())
  assert meta["tiny"] is True and meta["finished"] >= meta["started"]

  # the report, from the URL root into the URL report dir
  rep_dir = local / "report"
  for f in ("README.md", "metrics.json", "metrics_vs_keep.png", "reconstructions.png",
            "samples.png", "mask_adaptive.png"):
    assert (rep_dir / f).stat().st_size > 0, f
  assert (rep_dir / "mask_adaptive.png").read_bytes() == (
      local / "stage1" / "adaptive_k0.25" / "evaluation" / "figures" / "mask_grid.png").read_bytes()
  metrics = json.loads((rep_dir / "metrics.json").read_text())
  md = (rep_dir / "README.md").read_text()
  for i, (name, _) in enumerate(repro_small.STAGE1):
    want = _stage1_metrics(i)
    row = next(m for m in metrics["stage1"] if m["run"] == name)
    assert {k: row[k] for k in want} == want, name
    assert row["tokens_per_image"] == STAGE1_TOKENS[name][1]
    assert json.loads((rep_dir / "reports" / f"stage1_{name}.json").read_text())["metrics"] == want
    line = next(x for x in md.splitlines() if x.startswith(f"| `{name}` |"))
    assert f"| {want['rfid']:.2f} | {want['lpips']:.4f} | {want['psnr']:.2f} | " \
           f"{want['ssim']:.4f} |" in line, line
  for i, (name, _, _) in enumerate(repro_small.STAGE2):
    want = _stage2_metrics(i)
    row = next(m for m in metrics["stage2"] if m["run"] == name)
    assert {k: row[k] for k in want} == want, name
    line = next(x for x in md.splitlines() if x.startswith(f"| `{name}` |"))
    assert f"| {want['fid']:.2f} | {want['sampling/images_per_s']:.2f} |" in line, line
  assert "`emoji/16` (16 px" in md  # the budget, from the configs stored in the URL checkpoints
  assert "top-k 4, top-p 0.95 (Stackformer positions: top-k 10, top-p 0.95)" in md
  listed = md.split("```bash\n")[1].split("```")[0]
  assert "fake:" not in listed and "--workdir $ROOT/stage2/dense_gpt" in listed


@pytest.fixture
def restore_jax_cache_dir():
  import jax  # pylint: disable=import-outside-toplevel
  old = jax.config.jax_compilation_cache_dir
  yield jax
  jax.config.update("jax_compilation_cache_dir", old)


def test_main_keeps_url_locations_and_refuses_unknown_schemes(tmp_path, monkeypatch, capsys,
                                                              restore_jax_cache_dir):
  jax = restore_jax_cache_dir
  got = []
  monkeypatch.setattr(repro_small, "run", lambda *a: got.append(a) or {"markdown": "m"})
  monkeypatch.chdir(tmp_path)
  jax.config.update("jax_compilation_cache_dir", None)
  with fake_remote.mounted(str(tmp_path / "bucket")):
    assert repro_small.main(["--root", URL_ROOT + "/", "--tiny"]) == 0  # trailing "/" dropped
    assert jax.config.jax_compilation_cache_dir == URL_ROOT + "/xla_cache"
    assert repro_small.main(["--root", "rs", "--report_dir", URL_ROOT + "/out/"]) == 0
  assert got == [(URL_ROOT, URL_ROOT + "/report", True, False),
                 (str(tmp_path / "rs"), URL_ROOT + "/out", False, False)]
  assert repro_small.main(["--root", "nofs://b/rs"]) == 2
  assert capsys.readouterr().err.splitlines()[-1].startswith(
      "error: --root='nofs://b/rs': no filesystem for nofs://")
  assert list(tmp_path.iterdir()) == [tmp_path / "bucket"]


def test_dataset_dir_is_local_for_url_roots():
  """The emoji dataset is ArrayRecord (local files only): under a local root, in a local cache
  for a URL root ($MASKVQ_CACHE when local, else ~/.cache/maskvq_jax)."""
  home = os.path.expanduser("~")
  assert repro_small.data_dir_for("/r/rs", {}) == "/r/rs/tfds"
  assert repro_small.data_dir_for("gs://b/rs", {}) == f"{home}/.cache/maskvq_jax/tfds"
  assert repro_small.data_dir_for("gs://b/rs", {"MASKVQ_CACHE": "/c"}) == "/c/tfds"
  assert repro_small.data_dir_for("gs://b/rs", {"MASKVQ_CACHE": "gs://b/c"}) == \
      f"{home}/.cache/maskvq_jax/tfds"
