"""Meshes on which the hosts cannot each feed their own rows of a batch are refused before compile.

Every host reads batch / process_count examples of its own share and hands them to
`jax.make_array_from_process_local_data`. Where a mesh axis the batch is not split over (a "model"
axis) spans processes, two hosts hold the same batch rows but feed different examples: the
"replicated" batch then differs between hosts and training silently diverges (a 2-process x 1-device
fsdp_tp run with model=2 trained to the end with rc 0 before this check). The real 2-process launch
is in test_multiprocess.py; here the process of each device is simulated (`_process_of`).
"""
import numpy as np
import pytest

from maskvq_jax.core import cli
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.stage1 import trainer as stage1
from maskvq_jax.stage2 import trainer as stage2
import stage1_testlib
import stage2_testlib

NAMES, BATCH = ("data", "fsdp", "model"), ("data", "fsdp")


@pytest.mark.parametrize("shape,per_process,bad", [
    ((1, 1, 2), 1, True),    # 2 processes x 1 device, model=2: the model axis spans both
    ((1, 2, 2), 1, True),    # 4 x 1, fsdp=2, model=2: processes 0 and 1 share batch shard 0
    ((2, 1, 4), 2, True),    # 4 x 2, model=4 over two processes
    ((1, 4, 2), 4, False),   # 2 x 4 (the multi-process tests' fsdp_tp mesh): model within a host
    ((2, 2, 2), 2, False),   # 4 x 2, model=2 within each host
    ((8, 1, 1), 4, False),   # dp: every host holds its own rows
    ((8, 1, 1), 1, False),
])
def test_problem_iff_a_batch_shard_spans_processes(shape, per_process, bad):
  procs = (np.arange(int(np.prod(shape))) // per_process).reshape(shape)
  problem = sharding_lib.process_batch_problem(NAMES, procs, BATCH)
  assert (problem is not None) == bad, problem
  if bad:
    assert "'model': " in problem and "keep ['model'] within a process" in problem, problem
    assert "lies on processes [0, 1]" in problem, problem


def test_axis_order_counts_not_only_sizes():
  """model outer, data inner on 2 processes x 2 devices: the model axis spans the processes."""
  procs = (np.arange(4) // 2).reshape(2, 2)
  assert sharding_lib.process_batch_problem(("model", "data"), procs, BATCH)
  assert sharding_lib.process_batch_problem(("data", "model"), procs, BATCH) is None


_TP = (("data", 1), ("fsdp", 4), ("model", 2))


def test_stage1_refuses_before_compiling(tmp_path, monkeypatch):
  # the 8 devices as 4 processes x 2 devices, the model axis (inner) across process pairs
  monkeypatch.setattr(sharding_lib, "_process_of", lambda d: d.id % 2)
  config = stage1_testlib.tiny("rules=fsdp_tp", mesh=_TP)
  with pytest.raises(cli.UserError, match=r"batch shard 0 of 4 .* lies on processes \[0, 1\]"):
    stage1.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()
  monkeypatch.setattr(sharding_lib, "_process_of", lambda d: d.id // 2)  # model within a process
  sharding_lib.check_process_batches(sharding_lib.make_mesh(_TP), sharding_lib.get_rules("fsdp_tp"))


def test_stage2_refuses_before_compiling(tmp_path, monkeypatch):
  tok = stage2_testlib.make_stage1_workdir(str(tmp_path / "tok"))
  monkeypatch.setattr(sharding_lib, "_process_of", lambda d: d.id % 2)
  config = stage2_testlib.tiny(tok, "rules=fsdp_tp", mesh=_TP)
  with pytest.raises(cli.UserError, match=r"keep \['model'\] within a process"):
    stage2.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()
