#!/usr/bin/env bash
# The test command: builds the environment if needed, then runs the default test suite.
# pytest's exit code 5 (no tests collected) is a failure of ours, not a pass.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
# shellcheck disable=SC1091
source scripts/env.sh "test,peers,lightning,tensorboard,docs" || exit 1
python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
