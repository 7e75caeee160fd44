#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv with Python 3.12+ and installs
# requirements.txt plus the package itself. Prints nothing but progress; exits non-zero on failure.
#
# Interpreter search order: $PYTHON, python3.13/python3.12 on PATH, pyenv's versions, uv.
# Re-running is cheap: the install is skipped while requirements.txt and pyproject.toml are unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MASKVQ_VENV:-$ROOT/.venv}"

is_py312() {  # $1: interpreter; true when it runs and is >= 3.12
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    if is_py312 "$PYTHON"; then echo "$PYTHON"; return 0; fi
    echo "setup_env: \$PYTHON=$PYTHON is not a Python >= 3.12 interpreter" >&2; return 1
  fi
  local c
  for c in python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && is_py312 "$(command -v "$c")"; then command -v "$c"; return 0; fi
  done
  local roots=("${PYENV_ROOT:-$HOME/.pyenv}")
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
  for r in "${roots[@]}"; do
    for c in "$r"/versions/3.12*/bin/python3 "$r"/versions/3.13*/bin/python3; do
      if [[ -x "$c" ]] && is_py312 "$c"; then echo "$c"; return 0; fi
    done
  done
  if command -v uv >/dev/null 2>&1; then
    c="$(uv python find 3.12 2>/dev/null || true)"
    if [[ -n "$c" ]] && is_py312 "$c"; then echo "$c"; return 0; fi
  fi
  echo "setup_env: no Python >= 3.12 found. Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
  return 1
}

if [[ ! -x "$VENV/bin/python" ]] || ! is_py312 "$VENV/bin/python"; then
  PY="$(find_python)"
  echo "setup_env: creating $VENV with $PY ($("$PY" --version 2>&1))" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.maskvq_install_stamp"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha1sum | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "setup_env: installing requirements into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # --no-compile: no .pyc for all ~1.6 GB of wheels up front (TensorFlow alone is 1.3 GB); Python
  # writes them for the modules it imports, on first import. Set-up from a warm pip cache, 2 cores:
  # 67.6 s -> 31.5 s (2026-12-02); the first import of the trainers took 4.6 s either way.
  "$VENV/bin/python" -m pip install -q --no-compile -r "$ROOT/requirements.txt" >&2
  "$VENV/bin/python" -m pip install -q --no-compile --no-deps -e "$ROOT" >&2
  echo "$WANT" > "$STAMP"
fi
