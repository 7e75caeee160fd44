"""Restore failures classified: another config or shape -> one clear error, nothing moved;
unreadable files -> quarantined (read-only: skipped, nothing moved); transient errors -> raised.

Every "nothing moved" claim compares the checkpoint directory's file list and bytes before/after.
"""
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from maskvq_jax.core import checkpointing
from maskvq_jax.core import resume_guard
from maskvq_jax.stage1 import trainer
from stage1_testlib import enable_compile_cache, tiny  # tests/ is on sys.path

enable_compile_cache()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(root) -> dict:
  """{relative path: bytes} of every file under `root`."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = fh.read()
  return out


def _small(v, n=4):
  return {"w": jnp.full((8, n), v, jnp.float32), "step": jnp.asarray(v, jnp.int32)}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _saved(tmp_path, steps=(1, 2)) -> str:
  d = str(tmp_path / "checkpoints")
  ck = checkpointing.Checkpointer(d, save_every=1, max_to_keep=5)
  for s in steps:
    ck.save(s, _small(s), meta={"step": s, "config": {"model": {"ch": 32}}})
  ck.close()
  return d


def _truncate_arrays(d, step):
  for root, _, files in os.walk(os.path.join(d, str(step), "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")


# ===================================================================== Checkpointer level
def test_shape_mismatch_is_an_error_naming_key_and_shapes_and_moves_nothing(tmp_path):
  d = _saved(tmp_path)
  before = _snapshot(tmp_path)
  ck = checkpointing.Checkpointer(d, save_every=1)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"checkpoint step 2 in .* does not fit this run's train state "
                           r"\(1 differences\): w: checkpoint \(8, 4\) float32 vs this run "
                           r"\(8, 6\) float32\. Nothing was moved"):
    ck.restore_latest(_abstract(_small(0, n=6)))
  ck.close()
  assert _snapshot(tmp_path) == before


def test_missing_extra_and_dtype_differences_are_named(tmp_path):
  d = _saved(tmp_path)
  target = {"w": jax.ShapeDtypeStruct((8, 4), jnp.bfloat16), "v": jax.ShapeDtypeStruct((2,), jnp.float32)}
  ck = checkpointing.Checkpointer(d, save_every=1, read_only=True)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as e:
    ck.restore_latest(target)
  msg = str(e.value)
  assert "(3 differences)" in msg
  assert "w: checkpoint (8, 4) float32 vs this run (8, 4) bfloat16" in msg
  assert "v: not in the checkpoint (this run has (2,) float32)" in msg
  assert "step: only in the checkpoint (() int32)" in msg


def test_config_check_runs_before_restore_and_names_fields(tmp_path):
  d = _saved(tmp_path)
  before = _snapshot(tmp_path)
  check = lambda meta, own: [f"model.ch: checkpoint {meta['config']['model']['ch']} vs config 16"]
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"step 2 .* another configuration: model.ch: checkpoint 32 vs config 16"):
    checkpointing.Checkpointer(d, save_every=1).restore_latest(_abstract(_small(0)), check)
  assert _snapshot(tmp_path) == before


def test_truncated_step_is_quarantined_with_its_error(tmp_path, caplog):
  d = _saved(tmp_path, (1, 2, 3))
  _truncate_arrays(d, 3)
  ck = checkpointing.Checkpointer(d, save_every=1, max_to_keep=5)
  with caplog.at_level(logging.WARNING):
    step, state, meta, _ = ck.restore_latest(_abstract(_small(0)))
  ck.close()
  assert (step, meta["step"], int(state["step"])) == (2, 2, 2)
  moved = os.listdir(tmp_path / "corrupt_checkpoints")
  assert len(moved) == 1 and moved[0].startswith("3-")
  assert sorted(os.listdir(d)) == ["1", "2"]
  log = caplog.text
  assert re.search(r"checkpoint step 3 in .* cannot be read \((JSONDecodeError|ValueError): .+\)",
                   log)
  assert f"moved it to {tmp_path / 'corrupt_checkpoints' / moved[0]}" in log


def test_read_only_restore_of_a_broken_checkpoint_moves_nothing(tmp_path, caplog):
  d = _saved(tmp_path, (1, 2, 3))
  _truncate_arrays(d, 3)
  before = _snapshot(tmp_path)
  ck = checkpointing.Checkpointer(d, save_every=1, read_only=True)
  with caplog.at_level(logging.WARNING):
    assert ck.restore_latest(_abstract(_small(0)))[0] == 2
  ck.close()
  assert _snapshot(tmp_path) == before
  assert not (tmp_path / "corrupt_checkpoints").exists()
  assert "read-only: nothing moved" in caplog.text


def test_transient_restore_error_is_raised_not_quarantined(tmp_path, monkeypatch):
  d = _saved(tmp_path)
  before = _snapshot(tmp_path)
  ck = checkpointing.Checkpointer(d, save_every=1)

  def unavailable(*a, **k):
    raise ValueError("UNAVAILABLE: Error reading gs://b/x: connection reset")

  monkeypatch.setattr(ck, "restore", unavailable)
  with pytest.raises(ValueError, match="UNAVAILABLE"):
    ck.restore_latest(_abstract(_small(0)))
  monkeypatch.setattr(ck, "restore", lambda *a, **k: (_ for _ in ()).throw(TimeoutError("slow")))
  with pytest.raises(TimeoutError):
    ck.restore_latest(_abstract(_small(0)))
  ck.close()
  assert _snapshot(tmp_path) == before


def test_resume_dir_without_checkpoints_is_an_error(tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path / "run" / "checkpoints"), save_every=1)
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"config.resume='.*nope': no checkpoint in .*nope"):
    checkpointing.restore_for_training(ck, _abstract(_small(0)), str(tmp_path / "nope"))
  ck.close()


# ===================================================================== resume_guard
def test_differences_name_every_field_in_the_documented_format():
  stored = {"trainer": "mqvae", "model": {"ch": 32, "ch_mult": [1, 2], "scorer": "conv"},
            "optim": {"lr": 2e-4, "b1": 0.5}, "total_steps": 4, "seed": 0}
  current = {"trainer": "mqvae", "model": {"ch": 64, "ch_mult": [1, 1, 2], "scorer": "conv"},
             "optim": {"lr": 1e-4, "b1": 0.5}, "total_steps": 8, "seed": 1}
  own = resume_guard.differences(stored, current,
                                 resume_guard.STATE_FIELDS + resume_guard.RUN_FIELDS)
  assert own == ["model.ch: checkpoint 32 vs config 64",
                 "model.ch_mult: checkpoint (1, 2) vs config (1, 1, 2)",
                 "optim.lr: checkpoint 0.0002 vs config 0.0001", "seed: checkpoint 0 vs config 1"]
  assert resume_guard.differences(stored, current, resume_guard.STATE_FIELDS) == own[:2]


def test_fields_free_to_change_on_resume_are_not_compared():
  c = tiny("steps=4")
  meta = {"config": __import__("json").loads(c.to_json_best_effort())}
  check = resume_guard.checker(tiny("steps=40", run_steps=3, resume="/elsewhere", **{
      "input.batch_size": 16, "input.data_dir": "/moved", "eval.every_steps": 7,
      "log_every_steps": 9, "ckpt_every_steps": 6, "max_to_keep": 9, "compute_dtype": "bfloat16",
      "mesh": (("data", 2), ("fsdp", 4), ("model", 1)), "sharding_rules": "fsdp",
      "takeover_lock": True, "lock_timeout_s": 5.0}))
  assert check(meta, True) == [] and check(meta, False) == []
  check = resume_guard.checker(tiny("steps=4", **{"optim.lr": 1e-3, "loss.disc_weight": 0.5}))
  assert check(meta, True) == ["optim.lr: checkpoint 0.0002 vs config 0.001",
                               "loss.disc_weight: checkpoint 0.75 vs config 0.5"]
  assert check(meta, False) == []  # config.resume may fine-tune with another recipe
  # an older checkpoint without a field is not compared on it
  del meta["config"]["model"]["ch"]
  assert resume_guard.checker(tiny("steps=4", **{"model.ch": 64}))(meta, True) == []


def test_stage2_tokenizer_geometry_is_compared_as_extra_facts():
  meta = {"config": {"model": {"vocab_size": 17}}, "tokenizer": {"grid": 8, "keep_ratio": 0.5}}
  check = resume_guard.checker(tiny(), extra={"tokenizer": {"grid": 8, "keep_ratio": 0.75}})
  assert check(meta, False) == ["tokenizer.keep_ratio: checkpoint 0.5 vs config 0.75"]


# ===================================================================== both trainers' resume
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished 2-step tiny stage-1 run (checkpoint at step 2)."""
  wd = str(tmp_path_factory.mktemp("run") / "wd")
  out = trainer.train(tiny("steps=2"), wd)
  assert out["last_step"] == 2
  return wd


def test_lock_released_after_a_normal_run(run_dir):
  assert not os.path.exists(os.path.join(run_dir, "workdir.lock"))


def test_change_ch_mult_and_rerun_is_an_error_and_touches_nothing(run_dir, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(run_dir, wd)
  before = _snapshot(wd)
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as e:
    trainer.train(tiny("steps=4", **{"model.ch_mult": (1, 1, 2)}), wd)
  msg = str(e.value)
  assert msg.startswith(f"checkpoint step 2 in {wd}/checkpoints was written with another "
                        "configuration: model.ch_mult: checkpoint (1, 2) vs config (1, 1, 2). "
                        "Nothing was moved or deleted.")
  assert f"--config.resume={wd}" in msg
  assert _snapshot(wd) == before  # same files, same bytes; no corrupt_checkpoints/
  assert not os.path.exists(os.path.join(wd, "workdir.lock"))  # released on the error too


def test_changed_optimizer_on_own_workdir_names_the_field(run_dir, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(run_dir, wd)
  before = _snapshot(wd)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"optim.lr: checkpoint 0.0002 vs config 0.001; "
                           r"optim.b2: checkpoint 0.9 vs config 0.99\. Nothing"):
    trainer.train(tiny("steps=4", **{"optim.lr": 1e-3, "optim.b2": 0.99}), wd)
  assert _snapshot(wd) == before


def test_resume_from_a_run_of_another_width_names_the_width_field(run_dir, tmp_path):
  before = _snapshot(run_dir)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"checkpoint step 2 in .*/checkpoints was written with another "
                           r"configuration: model.ch: checkpoint 32 vs config 64; model.z_channels: "
                           r"checkpoint 64 vs config 128\. Nothing was "
                           r"moved or deleted\. config.resume must name a run of the same model"):
    trainer.train(tiny("steps=4", resume=run_dir,
                       **{"model.ch": 64, "model.z_channels": 128}), str(tmp_path / "new"))
  assert _snapshot(run_dir) == before
  assert not os.path.exists(tmp_path / "new" / "checkpoints" / "1")


def test_cli_prints_one_error_line_and_exits_2(run_dir, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(run_dir, wd)
  before = _snapshot(wd)
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "maskvq_jax.main", "--config",
       "configs/quickstart.py:tiny,perceptual=0,steps=4", "--config.model.ch_mult=(1,1,2)",
       "--workdir", wd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == [l for l in proc.stderr.splitlines() if "model.ch_mult" in l]
  assert len(errors) == 1 and errors[0].startswith(
      f"error: checkpoint step 2 in {wd}/checkpoints was written with another configuration: "
      "model.ch_mult: checkpoint (1, 2) vs config (1, 1, 2).")
  assert "Traceback" not in proc.stderr
  assert _snapshot(wd) == before
