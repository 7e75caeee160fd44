r"""The small-scale reproduction of the paper's ablations on real images (emoji), one command.

  bash launch/repro_small.sh [ROOT]                    # what the README tells you to run
  python -m maskvq_jax.tools.repro_small --root runs/repro_small [--tiny] [--report_dir DIR]

Why: the parity tests prove the modules equal the authors' code; this shows what the method
does when trained, at a CPU budget (configs/repro_small.py), on held-out real images. With one
budget for every run it trains

  stage 1  dense VQGAN (all 16 x 16 tokens); MQ-VAE with the adaptive (conv) mask at keep 0.5 and
           0.25; a random mask at 0.25; the MLP scorer at 0.25; and a dense VQGAN on a coarser
           8 x 8 grid, i.e. the same 64 tokens per image as keep 0.25;
  stage 2  the Stackformer on the adaptive keep-0.25 tokens, and the dense raster GPT on the
           dense VQGAN's tokens (same width, depth, steps);

evaluates each on the held-out split with `python -m maskvq_jax.evaluate` (rFID, LPIPS, PSNR,
SSIM, codebook usage and perplexity; FID of as many samples as held-out images, sampling
images/s), and writes the report (`tools/repro_report.py`) into `--report_dir` (default
docs/repro_small for the full size, <ROOT>/report for --tiny).

Every step runs in this process through the same functions as its command line, and the exact
command is logged to <ROOT>/commands.txt. Re-running resumes: trainers continue from their last
checkpoint (a finished one does nothing), evaluations whose report matches the latest checkpoint
are kept, and wall times accumulate in <ROOT>/timings.json. A run killed outright leaves its
trainer's workdir lock behind; the rerun names the dead holder and `--takeover_lock` takes it.
Seeds are fixed (config.seed = 0, sampling seed 0). XLA compilations are cached in
<ROOT>/xla_cache. The dataset is built from the installed font into <ROOT>/tfds; without the font
the run stops at once with the install command.

`--root` and `--report_dir` may be URLs (gs://bucket/...): every run, the journal, the
compilation cache and the report then live there, and the trainers and evaluations are given the
same URLs (all paths go through `core/files.py`). The dataset stays on the local disk
(`data_dir_for`: ArrayRecord files are written and read locally).
"""
import argparse
import datetime
import json
import os
import shlex
import sys
import time

from maskvq_jax.core import files
from maskvq_jax.core import workdir_lock

STAGE1 = (  # (run name, configs/repro_small.py argument)
    ("dense", "dense"),
    ("adaptive_k0.5", "keep=0.5"),
    ("adaptive_k0.25", "keep=0.25"),
    ("random_k0.25", "keep=0.25,scorer=random"),
    ("mlp_k0.25", "keep=0.25,scorer=mlp"),
    ("dense_f4", "dense,down=4"),
)
STAGE2 = (  # (run name, stage-1 run it reads, configs/repro_small.py argument)
    ("stackformer_k0.25", "adaptive_k0.25", "stage=2"),
    ("dense_gpt", "dense", "stage=2,gpt=dense"),
    # the paper's own stage-2 comparison: the same number of tokens per image (64), masked from
    # the 16 x 16 grid (Stackformer) against all of a dense 8 x 8 grid (raster GPT)
    ("dense_gpt_f4", "dense_f4", "stage=2,gpt=dense"),
)
STAGE1_METRICS = "rfid,psnr,ssim,lpips,usage,mask"
CONFIG = "configs/repro_small.py"
# this repository (the package's own files): the full-size report goes into its docs/
REPO = files.parent(files.parent(files.parent(files.absolute(__file__))))


def _log(msg):
  print(f"[repro_small] {msg}", file=sys.stderr, flush=True)


class Journal:
  """commands.txt (every command, in order, once) and timings.json (wall s per step, summed).

  Both are rewritten whole and atomically (`files.write_text`): object stores cannot append.
  """

  def __init__(self, root: str):
    self.root = root
    self.cmd_path = files.join(root, "commands.txt")
    self.time_path = files.join(root, "timings.json")
    self.timings = files.read_json(self.time_path) or {}

  def command(self, argv: list[str]):
    line = " ".join(shlex.quote(a) for a in argv)
    seen = files.read_text(self.cmd_path).splitlines() if files.exists(self.cmd_path) else []
    if line not in seen:
      files.write_text(self.cmd_path, "\n".join(seen + [line]) + "\n")
    _log(line)

  def timed(self, key: str, fn):
    t = time.time()
    out = fn()
    entry = self.timings.setdefault(key, {"wall_s": 0.0, "runs": 0})
    entry["wall_s"] += time.time() - t
    entry["runs"] += 1
    files.write_text(self.time_path, json.dumps(self.timings, indent=2) + "\n")
    return out


def _latest_step(workdir: str):
  from maskvq_jax.core import checkpointing  # pylint: disable=import-outside-toplevel
  d = files.join(workdir, "checkpoints")
  if not files.isdir(d):
    return None
  steps = checkpointing.Checkpointer(d, save_every=1).all_steps()
  return steps[-1] if steps else None


def _report_is_current(workdir: str) -> bool:
  rep = files.read_json(files.join(workdir, "evaluation", "report.json"))
  if rep is None:
    return False
  return (rep.get("target") or {}).get("step") == _latest_step(workdir)


def train(journal: Journal, key: str, arg: str, workdir: str, tokenizer: str = "",
          takeover_lock: bool = False):
  from configs import repro_small  # pylint: disable=import-outside-toplevel
  from maskvq_jax import trainers  # pylint: disable=import-outside-toplevel
  from maskvq_jax.core import train_loop  # pylint: disable=import-outside-toplevel
  cfg = repro_small.get_config(arg)
  cfg.takeover_lock = takeover_lock  # not journaled: it does not change what is computed
  argv = ["python", "-m", "maskvq_jax.main", "--config", f"{CONFIG}:{arg}", "--workdir", workdir]
  if tokenizer:
    cfg.tokenizer = tokenizer
    argv.append(f"--config.tokenizer={tokenizer}")
  journal.command(argv)
  if _latest_step(workdir) == cfg.total_steps:
    _log(f"{key}: finished earlier (step {cfg.total_steps})")
    return
  summary = journal.timed(key, lambda: trainers.get(cfg.trainer).train(cfg, workdir))
  train_loop.require_finished(summary, key)  # preempted: nothing after it may start


def evaluate(journal: Journal, key: str, flags: list[str]):
  from maskvq_jax import evaluate as evaluate_cli  # pylint: disable=import-outside-toplevel
  workdir = flags[flags.index("--workdir") + 1]
  journal.command(["python", "-m", "maskvq_jax.evaluate"] + flags)
  if _report_is_current(workdir):
    _log(f"{key}: evaluated earlier")
    return
  journal.timed(key, lambda: evaluate_cli.run(evaluate_cli.parse_args(flags)))


def data_dir_for(root: str, environ=None) -> str:
  """Where the emoji dataset is built: `<root>/tfds` for a local root. For a URL root a local
  cache, `$MASKVQ_CACHE/tfds` when that is local, else `~/.cache/maskvq_jax/tfds`: the dataset is
  ArrayRecord, which TFDS writes and grain reads through local files only."""
  if not files.is_remote(root):
    return files.join(root, "tfds")
  return files.join(files.cache_root(environ, local=True), "tfds")


def run(root: str, report_dir: str, tiny: bool, takeover_lock: bool = False) -> dict:
  from configs import repro_small  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import build  # pylint: disable=import-outside-toplevel
  from maskvq_jax.tools import repro_report  # pylint: disable=import-outside-toplevel
  root, report_dir = files.makedirs(root), files.absolute(report_dir)
  journal = Journal(root)
  data_dir = data_dir_for(root)
  if files.is_remote(root):
    _log(f"dataset in {data_dir} (ArrayRecord needs a local disk; {root} holds everything else)")
  res = 16 if tiny else repro_small.RES
  extra = f",data_dir={data_dir}" + (",tiny" if tiny else "")
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  meta_path = files.join(root, "run.json")
  meta = files.read_json(meta_path) or {"started": started}
  meta.update(tiny=tiny, last_started=started, load_average_at_start=list(os.getloadavg()))
  files.write_text(meta_path, json.dumps(meta, indent=2) + "\n")

  name = f"{repro_small.DATASET}/{res}"
  journal.command(["python", "-m", "maskvq_jax.data.build", "--name", name, "--data_dir",
                   data_dir])
  b = journal.timed("dataset", lambda: build.prepare(name, data_dir=data_dir))
  n_val = b.info.splits["validation"].num_examples

  for run_name, arg in STAGE1:
    wd = files.join(root, "stage1", run_name)
    train(journal, f"stage1/{run_name}", arg + extra, wd, takeover_lock=takeover_lock)
  n_eval = 16 if tiny else -1
  for run_name, _ in STAGE1:
    wd = files.join(root, "stage1", run_name)
    evaluate(journal, f"eval/{run_name}", [
        "--workdir", wd, "--metrics", STAGE1_METRICS, "--split", "validation",
        "--num_examples", str(n_eval), "--stats_cache", files.join(root, "cache"),
        "--num_figures", "8"])
  for run_name, tok, arg in STAGE2:
    wd = files.join(root, "stage2", run_name)
    train(journal, f"stage2/{run_name}", arg + extra, wd, files.join(root, "stage1", tok),
          takeover_lock=takeover_lock)
  n_samples = 16 if tiny else n_val
  top_k = 4 if tiny else repro_small.CODEBOOK // 8
  for run_name, _, arg in STAGE2:
    wd = files.join(root, "stage2", run_name)
    flags = ["--workdir", wd, "--metrics", "fid", "--split", "validation",
             "--num_examples", str(n_eval), "--num_samples", str(n_samples),
             "--sample_batch_size", "8" if tiny else "64", "--seed", "0",
             "--top_k", str(top_k), "--top_p", "0.95",
             "--stats_cache", files.join(root, "cache"),
             "--save_samples", files.join(wd, "evaluation", "samples.npz")]
    if "gpt=dense" not in arg:  # the authors' position filters (the dense GPT has none)
      flags += ["--position_top_k", "10", "--position_top_p", "0.95"]
    evaluate(journal, f"eval/{run_name}", flags)

  meta["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  files.write_text(meta_path, json.dumps(meta, indent=2) + "\n")
  journal.command(["python", "-m", "maskvq_jax.tools.repro_report", "--root", root, "--out",
                   report_dir])
  return repro_report.write(root, report_dir)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m maskvq_jax.tools.repro_small",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default="runs/repro_small",
                 help="runs, logs, dataset (local roots only); resumable; may be a URL")
  p.add_argument("--report_dir", default=None,
                 help="default: docs/repro_small (full size) or <root>/report (--tiny)")
  p.add_argument("--tiny", action="store_true", help="16 px, a few steps: the test's size")
  p.add_argument("--takeover_lock", action="store_true",
                 help="take over the STALE workdir locks a killed earlier run left behind")
  args = p.parse_args(argv)
  try:
    root = files.user_location(args.root, "--root")
    if args.report_dir:
      report_dir = files.user_location(args.report_dir, "--report_dir")
    else:
      report_dir = files.join(root, "report") if args.tiny else files.join(REPO, "docs",
                                                                            "repro_small")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  import jax  # pylint: disable=import-outside-toplevel
  from maskvq_jax.core import train_loop  # pylint: disable=import-outside-toplevel
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", files.join(root, "xla_cache"))
  try:
    out = run(root, report_dir, args.tiny, args.takeover_lock)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except workdir_lock.WorkdirLockError as e:  # e.g. a killed earlier run's stale lock
    print(f"error: {workdir_lock.with_takeover_flag(e, '--takeover_lock')}", file=sys.stderr)
    return 2
  except train_loop.RunStopped as e:  # preempted: no further run, no report
    print(f"stopped: {e}", file=sys.stderr)
    return train_loop.EXIT_STOPPED
  _log(f"report: {out['markdown']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
