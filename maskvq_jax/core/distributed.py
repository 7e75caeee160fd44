"""Starting JAX's multi-controller runtime, the same way for every entry point.

`python -m maskvq_jax.main`, `maskvq_jax.sample`, `maskvq_jax.evaluate` and
`maskvq_jax.tools.export_tokens` all run as one process per host. `--multihost` calls
`jax.distributed.initialize()`, which detects Cloud TPU / SLURM / MPI (and raises on a plain
single host, hence the flag). Where nothing can be detected (several processes on one machine,
`launch/local_multiprocess.sh`, or a hand-rolled cluster), `--coordinator_address=host:port
--num_processes=N --process_id=i` name the job explicitly (this implies `--multihost`; CPU
processes then talk through gloo collectives).
"""
import argparse
from typing import Optional

import jax


def add_flags(parser: argparse.ArgumentParser):
  """The four flags of an argparse CLI (main.py defines the same names as absl flags)."""
  g = parser.add_argument_group("multi-host")
  g.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize()")
  g.add_argument("--coordinator_address", default=None,
                 help="host:port of process 0's coordinator; skips auto-detection")
  g.add_argument("--num_processes", type=int, default=None, help="processes in the job (explicit)")
  g.add_argument("--process_id", type=int, default=None, help="this process's index (explicit)")


def initialize(multihost: bool = False, coordinator: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None):
  """Starts the runtime: explicitly when a coordinator is given, detected with `multihost`.

  Raises:
    ValueError: an incomplete or inconsistent set of explicit flags (names the values).
  """
  explicit = {"coordinator_address": coordinator, "num_processes": num_processes,
              "process_id": process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if not given:
    if multihost:
      jax.distributed.initialize()
    return
  if len(given) != 3:
    missing = sorted(set(explicit) - set(given))
    raise ValueError(f"--coordinator_address, --num_processes and --process_id go together; "
                     f"got {given}, missing {missing}")
  if ":" not in coordinator:
    raise ValueError(f"--coordinator_address={coordinator!r} must be host:port")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                     f"{num_processes})")
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process all-reduce
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)


def initialize_from_args(args: argparse.Namespace):
  """`initialize` from the flags `add_flags` defined."""
  initialize(args.multihost, args.coordinator_address, args.num_processes, args.process_id)
