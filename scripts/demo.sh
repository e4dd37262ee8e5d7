#!/usr/bin/env bash
# The demo command: builds the environment if needed, then runs `taskgrad demo`.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
# shellcheck disable=SC1091
source scripts/env.sh || exit 1
python -m taskgrad demo "$@"
