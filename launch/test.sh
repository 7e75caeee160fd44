#!/usr/bin/env bash
# Sets up the environment (launch/setup_env.sh) and runs the whole test suite on the CPU
# (8 simulated devices, see tests/conftest.py). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup_env.sh"
cd "$ROOT"
exec "${MASKVQ_VENV:-$ROOT/.venv}/bin/python" -m pytest tests "$@"
