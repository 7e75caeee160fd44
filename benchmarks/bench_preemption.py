r"""Per-step cost of the trainers' preemption agreement with 2 processes (4 CPU devices each).

  python benchmarks/bench_preemption.py                 # launches the 2-process job, prints JSON
  python benchmarks/bench_preemption.py --steps 2000 --repeats 5

Why: a multi-host run must agree on a preempted step, and the way it agrees decides whether the
host can dispatch ahead of the device. The trainers' `loop.Preemption.stop(step)` is called after
every step; this measures what that call costs per step, in every mode, on the same tiny sharded
step (small enough that dispatch, not compute, bounds it, so the check's cost is visible):

  none            no check (the floor)
  sync_point      JAX's preemption sync point (the default with jax.distributed): no host sync
  allgather_10    the local SIGTERM flags all-gathered every 10 steps (service off; the default
                  `preemption_check_every_steps`)
  allgather_1     the same every step: what stage 1 did before (one host-blocking all-gather per
                  step, the device queue drained every step)

Each mode runs `--steps` steps `--repeats` times after a warm-up; the result is the median ms per
step and the overhead over `none`. The job is `launch/local_multiprocess.sh` with
MODULE=benchmarks.bench_preemption (the worker below); process 0 prints the JSON line.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("none", "sync_point", "allgather_10", "allgather_1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from maskvq_jax.core import distributed  # pylint: disable=import-outside-toplevel
  from maskvq_jax.core import loop  # pylint: disable=import-outside-toplevel

  distributed.initialize(False, args.coordinator_address, args.num_processes, args.process_id)
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sh = NamedSharding(mesh, P("data"))
  x = jax.make_array_from_callback((jax.device_count() * 256,), sh,
                                   lambda idx: np.ones((256,), np.float32))
  # A training-like step: local work on each shard plus one cross-device reduction.
  step = jax.jit(lambda v: (v * 0.999 + 1.0, jnp.mean(v)), out_shardings=(sh, None))

  def run(mode: str, n: int) -> float:
    nonlocal x
    pre = loop.Preemption(0, 10 if mode == "allgather_10" else 1)
    if mode.startswith("allgather"):
      pre.mode = "allgather"  # the service-off path, whatever jax.distributed started
    t0 = time.perf_counter()
    with pre:
      for s in range(1, n + 1):
        x, _ = step(x)
        if mode != "none" and pre.stop(s):
          raise RuntimeError("no SIGTERM was sent, yet a preemption was agreed")
      jax.block_until_ready(x)
    return (time.perf_counter() - t0) / n * 1e3

  out = {m: [] for m in MODES}
  for m in MODES:
    run(m, 50)  # compile + warm-up
  for _ in range(args.repeats):
    for m in MODES:  # interleaved, so load changes hit every mode alike
      out[m].append(run(m, args.steps))
  if jax.process_index() == 0:
    med = {m: statistics.median(v) for m, v in out.items()}
    print("RESULT " + json.dumps({
        "processes": jax.process_count(), "devices": jax.device_count(), "steps": args.steps,
        "repeats": args.repeats, "jax": jax.__version__,
        "ms_per_step_median": {m: round(v, 4) for m, v in med.items()},
        "overhead_ms_per_step": {m: round(med[m] - med["none"], 4) for m in MODES[1:]},
        "ms_per_step_runs": {m: [round(t, 4) for t in v] for m, v in out.items()}}), flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=1000)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--coordinator_address", default=None)
  ap.add_argument("--num_processes", type=int, default=None)
  ap.add_argument("--process_id", type=int, default=None)
  args = ap.parse_args()
  if args.coordinator_address:  # a process of the job
    worker(args)
    return
  work = tempfile.mkdtemp(prefix="bench_preemption_")
  env = dict(os.environ, PYTHONPATH=ROOT, PYTHON=sys.executable, WORKDIR=work,
             MODULE="benchmarks.bench_preemption", NUM_PROCESSES="2", DEVICES_PER_PROCESS="4")
  env.pop("XLA_FLAGS", None)
  rc = subprocess.call(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"),
                        f"--steps={args.steps}", f"--repeats={args.repeats}"], cwd=ROOT, env=env)
  log = open(os.path.join(work, "logs", "multiprocess", "process_0.log")).read()
  lines = [l for l in log.splitlines() if l.startswith("RESULT ")]
  if rc or not lines:
    sys.exit(f"bench_preemption: the job failed (exit {rc}); see {work}/logs/multiprocess")
  print(lines[-1][len("RESULT "):])


if __name__ == "__main__":
  main()
