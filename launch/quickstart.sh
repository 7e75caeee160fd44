#!/usr/bin/env bash
# The README's main command: set up .venv, train stage 1 (MQ-VAE) then stage 2 (Stackformer) on the
# offline procedural shapes dataset on the CPU, and write pictures + metrics.json into WORKDIR.
#
#   bash launch/quickstart.sh [WORKDIR]        # default runs/quickstart; <= 10 min on 2 CPU cores
#   QUICKSTART_TINY=1 bash launch/quickstart.sh /tmp/qs   # CI size: 16 px, a few steps, ~1-2 min
#   bash launch/quickstart.sh WORKDIR --takeover_lock      # after a killed run: take its stale lock
#
# Re-running resumes the finished trainers (no step is redone) and rewrites only the report files.
# Everything happens in maskvq_jax/tools/quickstart.py; this script only prepares the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MASKVQ_VENV:-$ROOT/.venv}"
WORKDIR="${1:-runs/quickstart}"
case "$WORKDIR" in /*) ;; *) WORKDIR="$PWD/$WORKDIR" ;; esac

bash "$ROOT/launch/setup_env.sh"
cd "$ROOT"
ARGS=(--workdir "$WORKDIR")
if [[ "${QUICKSTART_TINY:-0}" != "0" ]]; then ARGS+=(--tiny); fi
ARGS+=("${@:2}")  # further flags of maskvq_jax.tools.quickstart, e.g. --takeover_lock
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# SECONDS: bash's clock since the script started (the environment set-up is the first stage)
echo "quickstart: environment ready after ${SECONDS}s; writing into $WORKDIR" >&2
exec "$VENV/bin/python" -m maskvq_jax.tools.quickstart "${ARGS[@]}"
