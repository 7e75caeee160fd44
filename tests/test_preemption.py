"""The trainers' preemption agreement (core/loop.Preemption) in each of its three modes.

The real multi-process runs (tests/test_multiprocess.py) send SIGTERM to one process of two; here
the mode choice, the cadence of the all-gather fallback and the signal handler's lifetime are
checked in-process, with the multi-host calls replaced by recorders.
"""
import os
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np
import pytest

from maskvq_jax.core import loop


def test_single_process_flag_after_sigterm_and_handler_restored():
  before = signal.getsignal(signal.SIGTERM)
  with loop.Preemption(5, 10) as pre:
    assert pre.mode == "local" and not pre.stop(6)
    os.kill(os.getpid(), signal.SIGTERM)
    assert pre.stop(7) and pre.flag
  assert signal.getsignal(signal.SIGTERM) is before
  with pytest.raises(ValueError, match="preemption_check_every_steps=0"):
    loop.Preemption(0, 0)


def test_allgather_mode_agrees_only_every_n_steps(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(loop, "_preemption_service", lambda: False)
  calls = []

  def allgather(x):  # the other process got the signal
    calls.append(int(x))
    return np.asarray([int(x), 1])

  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  with loop.Preemption(0, 4) as pre:
    assert pre.mode == "allgather"
    assert [pre.stop(s) for s in range(1, 9)] == [False, False, False, True] * 2
  assert calls == [0, 0]  # one collective per 4 steps, none in between


def test_sync_point_mode_asks_jax_and_installs_no_handler(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(loop, "_preemption_service", lambda: True)
  asked = []
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda step: asked.append(step) or step == 13)
  before = signal.getsignal(signal.SIGTERM)
  with loop.Preemption(10, 4) as pre:
    assert pre.mode == "sync_point"
    assert signal.getsignal(signal.SIGTERM) is before  # jax.distributed's notifier keeps SIGTERM
    assert [pre.stop(s) for s in (11, 12, 13)] == [False, False, True]
  assert asked == [10, 11, 12, 13]  # the start step is announced on entering
