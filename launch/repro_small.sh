#!/usr/bin/env bash
# The small-scale reproduction of the paper's ablations on real images (Noto Color Emoji, 32 px),
# on the CPU, in one command: every stage-1 variant and both stage-2 models with one budget,
# evaluated on the held-out split, report written to docs/repro_small/ (tables, plots, pictures,
# commands, machine, wall times). About two hours on 2 idle CPU cores; see configs/repro_small.py.
#
#   bash launch/repro_small.sh [ROOT]                 # default runs/repro_small; may be gs://...
#   REPRO_TINY=1 bash launch/repro_small.sh /tmp/rs   # 16 px, a few steps: report in ROOT/report
#
#   bash launch/repro_small.sh ROOT --takeover_lock  # after a killed run: take its stale locks
#
# Resumable: re-running continues the unfinished trainers from their checkpoints, keeps finished
# runs and evaluations, and only rewrites the report. Fixed seeds. Needs the emoji font:
#   sudo apt-get install fonts-noto-color-emoji      (without it the run stops at its first step,
#                                                    naming this command)
# Variables: REPRO_TINY (0|1), REPORT_DIR (default docs/repro_small, tiny: ROOT/report),
# MASKVQ_VENV (default <repo>/.venv, set up by launch/setup_env.sh), MASKVQ_EMOJI_FONT (a font
# file elsewhere than the distribution's place).
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MASKVQ_VENV:-$ROOT_DIR/.venv}"
RUN_ROOT="${1:-runs/repro_small}"
case "$RUN_ROOT" in /* | *://*) ;; *) RUN_ROOT="$PWD/$RUN_ROOT" ;; esac  # URLs kept as given
REPORT_DIR="${REPORT_DIR:-}"
case "$REPORT_DIR" in "" | /* | *://*) ;; *) REPORT_DIR="$PWD/$REPORT_DIR" ;; esac  # as ROOT
TINY="${REPRO_TINY:-0}"
[[ "$TINY" == 0 || "$TINY" == 1 ]] || { echo "repro_small.sh: REPRO_TINY=$TINY must be 0 or 1" >&2; exit 2; }

bash "$ROOT_DIR/launch/setup_env.sh"
cd "$ROOT_DIR"
ARGS=(--root "$RUN_ROOT")
[[ "$TINY" == 1 ]] && ARGS+=(--tiny)
[[ -n "$REPORT_DIR" ]] && ARGS+=(--report_dir "$REPORT_DIR")
ARGS+=("${@:2}")  # further flags of maskvq_jax.tools.repro_small, e.g. --takeover_lock
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "repro_small: writing into $RUN_ROOT" >&2
exec "$VENV/bin/python" -m maskvq_jax.tools.repro_small "${ARGS[@]}"
