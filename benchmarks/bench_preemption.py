r"""Per-step cost of the trainers' preemption agreement: the tiny stage-1 config, 1 or 2 processes.

  python benchmarks/bench_preemption.py --processes 2                 # this checkout
  python benchmarks/bench_preemption.py --processes 2 --repo /tmp/old  # another checkout's code
  python benchmarks/bench_preemption.py --processes 2 -- --jax_enable_preemption_service=false

Runs `python -m maskvq_jax.main` (through launch/local_multiprocess.sh for 2 processes, 4 CPU
devices each; 8 devices for 1 process) on `configs/quickstart.py:tiny,perceptual=0` with no
checkpoint, evaluation or parameter overview inside the measured steps and metrics fetched only
every `--log_every` steps, so the only per-step host work left is dispatch and the preemption
check. Reads ReportProgress's `steps_per_sec` from process 0's TensorBoard events, drops the
reports up to the first log step (compilation, dispatch running ahead) and prints one JSON line:
the reports, their median and ms per step.
Arguments after `--` go to maskvq_jax.main.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def steps_per_sec(workdir: str) -> dict[int, float]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for f in sorted(glob.glob(os.path.join(workdir, "**", "events.out.tfevents*"), recursive=True)):
    for ev in tf.compat.v1.train.summary_iterator(f):
      for v in ev.summary.value:
        if v.tag == "steps_per_sec":
          out[ev.step] = float(tf.make_ndarray(v.tensor))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--processes", type=int, choices=(1, 2), default=2)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--log_every", type=int, default=20)
  ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  ap.add_argument("--label", default="")
  ap.add_argument("extra", nargs="*")
  args = ap.parse_args()
  repo = os.path.abspath(args.repo)
  work = tempfile.mkdtemp(prefix="bench_preemption_")
  flags = ["--config", f"configs/quickstart.py:tiny,perceptual=0,steps={args.steps}",
           f"--config.log_every_steps={args.log_every}", f"--config.ckpt_every_steps={10 ** 6}",
           "--config.eval.every_steps=0", "--config.eval.image_every_steps=0",
           "--config.async_checkpointing=False", *args.extra]
  env = dict(os.environ, PYTHONPATH=repo, PYTHON=sys.executable, WORKDIR=work)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if args.processes == 1:
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "maskvq_jax.main", *flags, "--workdir", work]
  else:
    env.pop("XLA_FLAGS", None)
    cmd = ["bash", os.path.join(repo, "launch", "local_multiprocess.sh"), *flags]
  # The exit status is reported, not required: a checkout whose run fails after the last report
  # (e.g. at its final save) still measured its steps.
  t0 = time.time()
  with open(os.path.join(work, "bench.log"), "w") as log:
    rc = subprocess.call(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
  wall = time.time() - t0
  sps = steps_per_sec(work)
  kept = {s: v for s, v in sorted(sps.items()) if s > args.log_every}
  if not kept:
    sys.exit(f"bench_preemption: no steps_per_sec after step {args.log_every} in {work} "
             f"(exit {rc}); see {work}/bench.log")
  med = statistics.median(kept.values())
  print(json.dumps({"label": args.label, "repo": repo, "processes": args.processes,
                    "extra": args.extra, "exit": rc, "wall_s": round(wall, 1),
                    "steps_per_sec": {str(k): round(v, 3) for k, v in kept.items()},
                    "median_steps_per_sec": round(med, 3), "ms_per_step": round(1e3 / med, 1)}))


if __name__ == "__main__":
  main()
