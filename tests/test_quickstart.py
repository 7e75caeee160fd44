"""The two-stage quickstart end to end at the CI size (QUICKSTART_TINY / --tiny).

Checks that every promised file is written, that metrics.json holds finite numbers, and that a
re-run resumes both trainers (no step redone) and keeps the checkpoints.
"""
import json
import math
import os
import subprocess

from maskvq_jax.core import checkpointing
from maskvq_jax.tools import quickstart
from stage1_testlib import enable_compile_cache

enable_compile_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_script_is_valid_bash_and_uses_the_tiny_knob():
  script = os.path.join(ROOT, "launch", "quickstart.sh")
  subprocess.run(["bash", "-n", script], check=True)
  text = open(script).read()
  assert "QUICKSTART_TINY" in text and "launch/setup_env.sh" in text
  assert "maskvq_jax.tools.quickstart" in text


def test_quickstart_tiny_end_to_end(tmp_path):
  wd = str(tmp_path / "qs")
  assert quickstart.main(["--workdir", wd, "--tiny"]) == 0
  for f in ("reconstructions.png", "samples_unconditional.png", "samples_class.png",
            "mask/mask_grid.png", "mask/mask_heat_00.png", "mask/mask_overlay_00.png",
            "metrics.json"):
    assert os.path.getsize(os.path.join(wd, f)) > 0, f
  m = json.load(open(os.path.join(wd, "metrics.json")))
  for k in ("psnr", "codebook_used_fraction", "kept_on_object_tokens", "object_tokens_chance"):
    assert math.isfinite(m["stage1"][k]), k
  assert 0 < m["stage1"]["codebook_used_fraction"] <= 1
  assert m["stage2"]["sampling_tokens_per_s"] > 0 and m["stage2"]["positions_distinct"]
  assert m["stage1"]["train_steps"] == 4 and m["stage2"]["train_steps"] == 4

  steps = checkpointing.Checkpointer(os.path.join(wd, "stage2", "checkpoints"),
                                     save_every=1).all_steps()
  assert quickstart.main(["--workdir", wd, "--tiny"]) == 0  # resumes: nothing redone or lost
  again = json.load(open(os.path.join(wd, "metrics.json")))
  assert again["stage2"]["train_steps"] == 4
  assert checkpointing.Checkpointer(os.path.join(wd, "stage2", "checkpoints"),
                                    save_every=1).all_steps() == steps
