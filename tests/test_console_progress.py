"""Console progress: the trainers' step lines (steps/s, ETA) and the quickstart's stage lines."""
import io
import re

import pytest

from maskvq_jax.core import progress
from stage1_testlib import enable_compile_cache

enable_compile_cache()

# step 3/4 | total_g 0.5 | l1 0.25 | ... | 1.23 steps/s | ETA 0:00:01
STEP_LINE = re.compile(r"^step (\d+)/(\d+) \|( [a-z_/\d]+ [-+.e\d]+ \|)+ "
                       r"(?:([\d.e+]+) steps/s \| ETA (\d+:\d\d:\d\d)|-- steps/s \| ETA --)$")


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_step_line_rate_leaves_out_compilation_and_evaluation():
  clock, out = _Clock(), io.StringIO()
  line = progress.StepLine(100, stream=out, enabled=True, clock=clock)
  clock.t = 50.0  # the first step compiled for 50 s; the rate starts after it
  line.tick(1)
  line.tick(2)  # later ticks do not move the start
  clock.t = 62.0
  line.exclude(2.0)  # an evaluation inside the interval
  assert line(11, {"loss/l1": 0.123456, "loss": 2.0, "lr": 1e-3}, ("loss/l1", "loss")) == (
      "step 11/100 | l1 0.1235 | loss 2 | 1 steps/s | ETA 0:01:29")
  clock.t = 66.0  # next interval: 20 steps in 4 s, nothing excluded any more
  assert line(31, {}, ()) == "step 31/100 | 5 steps/s | ETA 0:00:13"
  assert out.getvalue().splitlines() == [
      "step 11/100 | l1 0.1235 | loss 2 | 1 steps/s | ETA 0:01:29",
      "step 31/100 | 5 steps/s | ETA 0:00:13"]


def test_step_line_without_a_measured_interval_and_off_process_zero():
  clock, out = _Clock(), io.StringIO()
  line = progress.StepLine(4, stream=out, enabled=False, clock=clock)
  line.tick(1)
  assert line.line(1, {"loss": 1.5}, ("loss",)) == "step 1/4 | loss 1.5 | -- steps/s | ETA --"
  assert line(1, {"loss": 1.5}, ("loss",)) is None and out.getvalue() == ""


def _step_lines(stdout: str) -> list[re.Match]:
  lines = [ln for ln in stdout.splitlines() if ln.startswith("step ")]
  matches = [STEP_LINE.match(ln) for ln in lines]
  assert lines and all(matches), stdout
  return matches


def test_stage1_training_prints_step_lines(tmp_path, capsys):
  from maskvq_jax.stage1 import trainer  # pylint: disable=import-outside-toplevel
  from stage1_testlib import tiny  # pylint: disable=import-outside-toplevel
  trainer.train(tiny("steps=4"), str(tmp_path))  # test_train_smoke's config: cached compilation
  m = _step_lines(capsys.readouterr().out)
  assert [(int(x.group(1)), int(x.group(2))) for x in m] == [(1, 4), (2, 4), (3, 4), (4, 4)]
  assert "| total_g " in m[0].string and "| l1 " in m[0].string and "| commit " in m[0].string
  assert m[0].group(4) is None  # step 1: nothing measured yet (it compiled)
  assert all(float(x.group(4)) > 0 for x in m[1:])  # then steps/s and an ETA
  assert m[-1].group(5) == "0:00:00"


def test_stage2_training_prints_step_lines(tmp_path, capsys):
  from maskvq_jax.stage2 import trainer  # pylint: disable=import-outside-toplevel
  from stage2_testlib import make_stage1_workdir, tiny  # pylint: disable=import-outside-toplevel
  tok = make_stage1_workdir(str(tmp_path / "s1"))
  capsys.readouterr()
  trainer.train(tiny(tok, "steps=4"), str(tmp_path / "s2"))  # test_stage2_train's config
  m = _step_lines(capsys.readouterr().out)
  assert [int(x.group(1)) for x in m] == [1, 2, 3, 4]
  assert all("| loss " in x.string and "| code_loss " in x.string and "| position_loss " in
             x.string for x in m)
  assert float(m[-1].group(4)) > 0 and m[-1].group(5) == "0:00:00"


def test_quickstart_stage_lines_show_elapsed_time(monkeypatch, capsys):
  quickstart = pytest.importorskip("maskvq_jax.tools.quickstart")
  monkeypatch.setattr(quickstart, "_START", [quickstart.time.time() - 754])
  quickstart._log("stage 2/3: Stackformer")  # pylint: disable=protected-access
  assert capsys.readouterr().err == "[quickstart 0:12:34] stage 2/3: Stackformer\n"
