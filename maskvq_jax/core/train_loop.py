"""The training loop both trainers run: step, log, save, periodic evaluations, agreed preemption.

Why one loop: the order of these events decides what a resumed or preempted run sees (the step a
checkpoint holds, which metrics were logged, whether the last evaluation ran) and the multi-process
agreement (every process must reach each save and each collective evaluation at the same step).
Stage 1 and stage 2 differ only in their step arguments, console keys, checkpoint meta and the
periodic jobs (stage 1: evaluation + reconstruction grids; stage 2: evaluation, sample grids).

Per step, in this order:
  1. the step is dispatched (no host round-trip: its metrics stay on device in `pending`);
  2. the agreed preemption flag is read (`loop.Preemption.stop`, no host sync per step);
  3. on a log step, a save step, a preemption or the last step, the pending metrics are fetched,
     checked for NaN/Inf and written (train/*, then throughput/* and perf/*);
  4. a checkpoint is written on save steps, on preemption and at the end (with every process's data
     position);
  5. the periodic jobs whose cadence is due run (their last run at the end of training, not after a
     preemption: the rerun does it);
  6. a preempted run stops after its checkpoint.
"""
import contextlib
import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import numpy as np

from maskvq_jax.core import checkpointing
from maskvq_jax.core import loop


# Exit status of a tool that chains trainers (quickstart, repro_small) after one of them was
# preempted: 128 + SIGTERM, so schedulers that requeue terminated jobs requeue it.
EXIT_STOPPED = 143


class RunStopped(RuntimeError):
  """A trainer returned before its last step (preempted): what comes after it must not start."""


def require_finished(summary: dict, name: str) -> dict:
  """`summary` (a trainer's) if it reached its last step, else RunStopped naming where it stopped.

  A preempted trainer exits cleanly with a checkpoint; a pipeline that went on would evaluate or
  train on an unfinished model (the next stage reads the latest checkpoint).
  """
  if summary["finished"]:
    return summary
  why = "preempted (SIGTERM)" if summary.get("preempted") else "stopped early (run_steps)"
  raise RunStopped(f"{name} {why} at step {summary['last_step']} of {summary['total_steps']}, "
                   "its checkpoint written; rerun the same command to resume")


@dataclasses.dataclass
class Periodic:
  """A job run every `every` steps and at the end of training: `run(step, state)` -> its result.

  The end-of-training run is skipped after a preemption (the resumed run does it) and when
  `enabled` is False; `every <= 0` leaves only that run.
  """
  name: str                       # result key and timing label ("eval", "sample", ...)
  every: int
  run: Callable[[int, Any], Any]
  initial: Any = None             # the result if the job never ran
  in_mesh: bool = True            # run under the mesh and logical axis rules (else as is)
  enabled: bool = True


@contextlib.contextmanager
def _mesh_context(enter: bool, mesh, rules):
  if not enter:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def run(*, config, state, first: int, total: int, step_fn, step_args: Sequence, data, mesh,
        rules, ckpt, writer, meter, meta: Callable[[int], dict], console: Sequence[str],
        extra_metrics: Optional[Callable[[], dict]] = None,
        periodic: Sequence[Periodic] = ()) -> dict:
  """Trains from step `first` to `total` (or `config.run_steps` more); returns the run summary.

  `step_fn(state, batch, *step_args)` -> (state, metrics). `meta(step)` is the checkpoint meta.
  `extra_metrics()` adds host-side values to the logged train metrics. Closes `ckpt` and `writer`.
  The summary: first/last/total steps, the last logged train metrics, throughput, each periodic
  job's last result under its name, seconds, preempted, finished, the final state.
  """
  stop_at = total
  if config.get("run_steps", -1) > 0:  # stop this run early (with a checkpoint), e.g. time limits
    stop_at = min(total, first + config.run_steps)
  pending, last_metrics, last_rates, step, preempted = [], {}, {}, first, False
  results = {p.name: p.initial for p in periodic}
  t0 = time.time()
  try:
    with loop.Preemption(first, config.get("preemption_check_every_steps", 10)) as pre:
      for step in range(first + 1, stop_at + 1):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
          state, m = step_fn(state, next(data), *step_args)
        pending.append((step, m))
        writer.tick(step)
        preempted = pre.stop(step)
        final = step == stop_at
        save_now = ckpt.should_save(step) or preempted or final
        if save_now or loop.itstime(step, config.log_every_steps, total):
          fetched, pending = loop.check_finite(pending), []
          last_metrics = {k: float(np.mean([f[1][k] for f in fetched])) for k in fetched[-1][1]}
          if extra_metrics is not None:
            last_metrics.update(extra_metrics())
          last_rates = meter(step)  # throughput/*, perf/* (wall-clock: not under train/)
          writer.train_scalars(step, last_metrics, console=tuple(console), rates=last_rates)
        if save_now:
          ckpt.save(step, state, meta=meta(step),
                    data_state=checkpointing.gather_process_states(data.get_state()),
                    force=preempted or final)
          meter.mark(step)  # checkpoint time is not training time
        for p in periodic:
          if p.enabled and loop.itstime(step, p.every, total, last=final and not preempted):
            with writer.timed(p.name), _mesh_context(p.in_mesh, mesh, rules):
              results[p.name] = p.run(step, state)
            meter.mark(step)
        if preempted:
          logging.warning("preempted: checkpoint of step %d written; exiting cleanly", step)
          break
  finally:
    ckpt.close()
    writer.close()
  return {"first_step": first, "last_step": step, "total_steps": total, "train": last_metrics,
          "throughput": last_rates, **results, "seconds": time.time() - t0,
          "preempted": preempted, "finished": step == total, "state": state}
