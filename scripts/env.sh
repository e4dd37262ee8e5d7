#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs taskgrad into it.
# Usage: source scripts/env.sh [extras]   e.g. "test,peers"
set -e
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
. "$root/.venv/bin/activate"
stamp="$root/.venv/.taskgrad-installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # The CPU wheel of torch 2.13.0 lies on this machine's disk; GPU users keep their own torch.
  python -m pip install -q "torch==2.13.0"
  if [ -n "$extras" ]; then
    python -m pip install -q -e "$root[$extras]"
  else
    python -m pip install -q -e "$root"
  fi
  touch "$stamp"
fi
set +e
