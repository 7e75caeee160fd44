"""Tools that chain trainers (quickstart, repro_small) stop when a trainer is preempted.

A SIGTERM makes a trainer save its step and return cleanly (core/train_loop.py); the tool must
then stop with one line and exit status 143 instead of starting the next stage on the unfinished
model (the next stage reads the latest checkpoint) or writing a report of it.
"""
import os
import types

import pytest

from maskvq_jax.core import train_loop


def _summary(last, total, preempted):
  return {"first_step": 0, "last_step": last, "total_steps": total, "preempted": preempted,
          "finished": last == total, "train": {}}


def test_require_finished_passes_finished_runs_and_names_where_others_stopped():
  done = _summary(8, 8, False)
  assert train_loop.require_finished(done, "stage 1") is done
  with pytest.raises(train_loop.RunStopped) as e:
    train_loop.require_finished(_summary(3, 8, True), "stage 1")
  assert str(e.value) == ("stage 1 preempted (SIGTERM) at step 3 of 8, its checkpoint written; "
                          "rerun the same command to resume")
  with pytest.raises(train_loop.RunStopped, match=r"^stage2/dense_gpt stopped early \(run_steps\) "
                                                  r"at step 5 of 8, "):
    train_loop.require_finished(_summary(5, 8, False), "stage2/dense_gpt")


class _PreemptedTrainer:
  """Stands in for every trainer: records the call and returns as a SIGTERM'd run does."""

  def __init__(self):
    self.calls = []

  def train(self, config, workdir):
    self.calls.append(workdir)
    return _summary(2, config.total_steps, True)


@pytest.mark.parametrize("tool", ["quickstart", "repro_small"])
def test_a_preempted_trainer_stops_the_tool(tool, tmp_path, monkeypatch, capsys):
  from maskvq_jax import trainers  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import build  # pylint: disable=import-outside-toplevel
  from maskvq_jax.tools import quickstart, repro_small  # pylint: disable=import-outside-toplevel
  fake = _PreemptedTrainer()
  monkeypatch.setattr(trainers, "get", lambda name: fake)
  if tool == "quickstart":
    main, argv = quickstart.main, ["--workdir", str(tmp_path), "--tiny"]
    first, name, total = tmp_path / "stage1", "stage 1", 4
    report = tmp_path / "metrics.json"
  else:  # the dataset step is not what is tested here
    splits = {"validation": types.SimpleNamespace(num_examples=8)}
    monkeypatch.setattr(build, "prepare", lambda name, data_dir: types.SimpleNamespace(
        info=types.SimpleNamespace(splits=splits)))
    main, argv = repro_small.main, ["--root", str(tmp_path), "--tiny",
                                    "--report_dir", str(tmp_path / "report")]
    run_name = repro_small.STAGE1[0][0]
    first, name = tmp_path / "stage1" / run_name, f"stage1/{run_name}"
    from configs import repro_small as cfg  # pylint: disable=import-outside-toplevel
    total = cfg.get_config(repro_small.STAGE1[0][1] + ",tiny").total_steps
    report = tmp_path / "report" / "README.md"
  assert main(argv) == train_loop.EXIT_STOPPED == 143
  assert fake.calls == [str(first)]  # nothing after the preempted trainer started
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (f"stopped: {name} preempted (SIGTERM) at step 2 of {total}, its checkpoint "
                     "written; rerun the same command to resume")
  assert not os.path.exists(report)
