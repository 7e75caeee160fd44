"""Console progress: the trainers' step lines (steps/s, ETA) and the quickstart's stage lines."""
import io
import re

import pytest

from maskvq_jax.core import progress
from stage1_testlib import enable_compile_cache

enable_compile_cache()

# step 3/4 | total_g 0.5 | l1 0.25 | ... | 40.1 img/s, 5.01 /device | 1.23 steps/s | ETA 0:00:01
STEP_LINE = re.compile(r"^step (\d+)/(\d+) \|( [a-z_/\d]+ [-+.e\d]+ \|)+"
                       r"(?: ([\d.e+]+) (img|tok)/s, ([\d.e+]+) /device \|)?"
                       r"(?: MFU [\d.]+% \|)? "
                       r"(?:([\d.e+]+) steps/s \| ETA (\d+:\d\d:\d\d)|-- steps/s \| ETA --)$")
RATE, UNIT, PER_DEVICE, STEPS_PER_S, ETA = 4, 5, 6, 7, 8


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


def test_step_line_throughput_from_the_meter():
  """The meter's figures (throughput.Meter) as the console shows them: tokens/s when counted,
  else images/s, global and per device, then MFU; nothing without rates."""
  from maskvq_jax.core import throughput  # pylint: disable=import-outside-toplevel
  clock = _Clock()
  step_fn = type("Step", (), {"flops_per_device": 2e9})()
  meter = throughput.Meter(examples_per_step=8, tokens_per_example=64, step_fn=step_fn,
                           num_devices=4, device_kind="NVIDIA H200", clock=clock)
  meter.mark(10)
  clock.t = 2.0  # 10 steps in 2 s: 5 steps/s, 40 images/s, 2,560 tokens/s, 10 / device per image
  rates = meter(20)
  assert progress.throughput_parts(rates) == [
      "2.56e+03 tok/s, 640 /device", f"MFU {100 * 2e9 * 5 / 989e12:.1f}%"]
  rates.pop("throughput/tokens_per_s")
  assert progress.throughput_parts(rates)[0] == "40 img/s, 10 /device"
  assert progress.throughput_parts({}) == []
  line = progress.StepLine(100, stream=io.StringIO(), enabled=True, clock=clock)
  text = line.line(20, {"loss": 1.5}, ("loss",), {
      "throughput/images_per_s": 40.0, "throughput/images_per_s_per_device": 10.0})
  assert text == "step 20/100 | loss 1.5 | 40 img/s, 10 /device | -- steps/s | ETA --"
  assert STEP_LINE.match(text)


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
  assert m[0].group(STEPS_PER_S) is None  # step 1: nothing measured yet (it compiled)
  assert m[0].group(RATE) is None
  assert all(float(x.group(STEPS_PER_S)) > 0 for x in m[1:])  # then steps/s and an ETA
  assert m[-1].group(ETA) == "0:00:00"
  _check_throughput(m[1:], "img")


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
  assert float(m[-1].group(STEPS_PER_S)) > 0 and m[-1].group(ETA) == "0:00:00"
  _check_throughput(m[1:], "tok")


def _check_throughput(matches, unit):
  """Images/s (stage 1) or tokens/s (stage 2), global = per device x devices, no MFU on CPU."""
  import jax  # pylint: disable=import-outside-toplevel
  for x in matches:
    assert x.group(UNIT) == unit, x.string
    assert float(x.group(RATE)) == pytest.approx(
        float(x.group(PER_DEVICE)) * jax.device_count(), rel=1e-2), x.string
    assert "MFU" not in x.string


def test_quickstart_stage_lines_show_elapsed_time(monkeypatch, capsys):
  quickstart = pytest.importorskip("maskvq_jax.tools.quickstart")
  monkeypatch.setattr(quickstart, "_START", [quickstart.time.time() - 754])
  quickstart._log("stage 2/3: Stackformer")  # pylint: disable=protected-access
  assert capsys.readouterr().err == "[quickstart 0:12:34] stage 2/3: Stackformer\n"
