"""End-to-end stage-1 trainer: smoke, resume (exact), NaN guard, SIGTERM, config rejection.

Uses `configs/quickstart.py:tiny` (16 px procedural shapes, batch 8 over 8 simulated devices).
"""
import os
import re
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from configs import quickstart
from maskvq_jax.core import checkpointing
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path (rootdir conftest)

enable_compile_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(la) == len(lb)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_smoke_with_lpips_eval_images_and_rerun(tmp_path):
  c = quickstart.get_config("tiny,steps=2")  # perceptual loss on
  c.eval.update(every_steps=2, image_every_steps=2)
  out = trainer.train(c, str(tmp_path))
  assert (out["first_step"], out["last_step"]) == (0, 2)
  assert np.isfinite(out["train"]["loss/total_g"]) and out["train"]["loss/lpips"] > 0
  for k in ("psnr", "ssim", "lpips", "l1", "codebook_usage", "object_recall", "kept_fraction"):
    assert np.isfinite(out["eval"][k]), k
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1).all_steps()[-1] == 2
  meta = checkpointing.read_meta(str(tmp_path / "checkpoints"))
  assert meta["step"] == 2 and meta["config"]["model"]["keep_ratio"] == 0.5
  assert any(f.endswith(".png") for f in os.listdir(tmp_path / "images"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  again = trainer.train(c, str(tmp_path))  # finished run: resumes at 2, does no step
  assert (again["first_step"], again["last_step"]) == (2, 2)


def test_resume_is_bitwise_exact_including_data_order(tmp_path):
  straight = trainer.train(tiny("steps=4"), str(tmp_path / "a"))
  half = trainer.train(tiny("steps=4", run_steps=2), str(tmp_path / "b"))
  assert (half["last_step"], half["finished"]) == (2, False)
  rest = trainer.train(tiny("steps=4"), str(tmp_path / "b"))
  assert (rest["first_step"], rest["last_step"]) == (2, 4)
  assert _leaves_equal(straight["state"], rest["state"])
  assert straight["train"] == rest["train"]  # metrics of the last logged step, data included


def test_nan_in_loss_stops_without_checkpointing_bad_state(tmp_path):
  c = tiny("steps=6", debug_inject_nan_step=3, ckpt_every_steps=2)
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 3: .*loss/nll=nan"):
    trainer.train(c, str(tmp_path))
  steps = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1).all_steps()
  assert steps and max(steps) < 3


@pytest.mark.parametrize("override,match", [
    (dict(**{"input.batch_size": 12}), "input.batch_size=12 is not divisible"),
    (dict(mesh=(("data", 3), ("fsdp", 1), ("model", 1))), "has 3 devices but 8"),
    (dict(**{"model.keep_ratio": 1.5}), "keep_ratio=1.5"),
    (dict(**{"model.scorer": "transformer"}), "unknown scorer='transformer'"),
    (dict(sharding_rules="fsdp_tp", mesh=(("data", -1), ("fsdp", 1))), "missing from mesh"),
])
def test_bad_config_rejected_before_compilation(override, match):
  with pytest.raises(ValueError, match=match):
    trainer.validate_config(tiny(**override), 8)


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
  cmd = [sys.executable, "-m", "maskvq_jax.main", "--config",
         "configs/quickstart.py:tiny,perceptual=0,steps=10000", "--config.ckpt_every_steps=5000",
         "--workdir", str(tmp_path), "--alsologtostderr"]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
  lines, seen = [], threading.Event()

  def pump():
    for line in proc.stdout:
      lines.append(line)
      m = re.search(r"\] \[(\d+)\] train/", line)
      if m and int(m.group(1)) >= 3:
        seen.set()

  threading.Thread(target=pump, daemon=True).start()
  assert seen.wait(300), "".join(lines[-30:])
  proc.send_signal(15)
  rc = proc.wait(120)
  time.sleep(0.5)
  log = "".join(lines)
  assert rc == 0, log[-3000:]
  assert "preempted" in log
  steps = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_every=1).all_steps()
  last = max(steps)
  assert 3 <= last < 10000
  assert f"done: steps 0 -> {last} of 10000 (preempted)" in log
  assert checkpointing.read_meta(str(tmp_path / "checkpoints"))["step"] == last


def test_resume_from_config_resume_when_workdir_is_empty(tmp_path):
  trainer.train(tiny("steps=4", run_steps=2), str(tmp_path / "a"))
  out = trainer.train(tiny("steps=4", run_steps=1, resume=str(tmp_path / "a")), str(tmp_path / "b"))
  assert (out["first_step"], out["last_step"]) == (2, 3)
  # Now the new workdir has its own checkpoint, which wins over config.resume.
  out = trainer.train(tiny("steps=4", resume=str(tmp_path / "a")), str(tmp_path / "b"))
  assert (out["first_step"], out["last_step"]) == (3, 4)
