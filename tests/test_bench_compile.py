"""benchmarks/bench_compile.py at a tiny depth: its JSON keys, step timing and argument errors."""
import importlib.util
import pathlib

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(name="bench")
def _bench():
  spec = importlib.util.spec_from_file_location("bench_compile",
                                                ROOT / "benchmarks" / "bench_compile.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cache = jax.config.jax_enable_compilation_cache
  yield mod
  jax.config.update("jax_enable_compilation_cache", cache)  # main() turns it off


def test_compile_and_step_times_both_layouts(bench, capsys):
  out = bench.main(["--models", "stackformer_307m", "--layers", "1", "--batch", "8",
                    "--steps", "1", "--kinds", "unrolled,scanned"])
  assert capsys.readouterr().out.strip().startswith("{")
  m = "stackformer_307m"
  assert out[f"{m}_info"]["layers"] == [1, 1] and out[f"{m}_info"]["batch"] == 8
  for kind in ("scanned", "unrolled"):
    assert out[f"{m}_{kind}_compile_s"] > 0 and out[f"{m}_{kind}_step_s"] > 0
    assert out[f"{m}_{kind}_temp_gb"] > 0  # the saved activations at least
  assert out[f"{m}_compile_speedup"] == round(out[f"{m}_unrolled_compile_s"]
                                              / out[f"{m}_scanned_compile_s"], 2)
  assert out[f"{m}_step_scanned_over_unrolled"] == round(
      out[f"{m}_scanned_step_s"] / out[f"{m}_unrolled_step_s"], 3)


def test_one_layout_has_no_ratio(bench):
  out = bench.main(["--models", "stackformer_307m", "--layers", "1", "--batch", "8",
                    "--kinds", "scanned"])
  assert "stackformer_307m_scanned_compile_s" in out
  assert "stackformer_307m_unrolled_compile_s" not in out
  assert "stackformer_307m_compile_speedup" not in out
  assert "stackformer_307m_scanned_step_s" not in out  # --steps 0: compile only


@pytest.mark.parametrize("argv, message", [
    (["--kinds", "scanned,scanned"], "--kinds='scanned,scanned': give scanned and / or unrolled"),
    (["--kinds", "rolled"], "--kinds='rolled': give scanned and / or unrolled"),
    (["--steps", "-1"], "--steps=-1 must be >= 0"),
    (["--models", "gpt"], "--models='gpt': unknown ['gpt']"),
])
def test_bad_arguments_are_named(bench, capsys, argv, message):
  with pytest.raises(SystemExit):
    bench.main(argv)
  assert message in capsys.readouterr().err
