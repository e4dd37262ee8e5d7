#!/usr/bin/env bash
# The test command: builds the environment if needed (the docs extra too: .ci/run builds the site
# with the same environment), then runs the whole test suite; arguments go to pytest, e.g.
# `bash scripts/test.sh -m "not slow"` for the fast subset.
# pytest's exit code 5 (no tests collected) is a failure of ours, not a pass.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
# shellcheck disable=SC1091
source scripts/env.sh "test,peers,lightning,tensorboard,docs" || exit 1
# Lint, format and type checks first (rules in pyproject.toml); any failure fails the command.
if ! ruff check --quiet .; then
  echo "lint failed: 'ruff check --fix .' fixes some; the rest is listed above" >&2
  exit 1
fi
if ! ruff format --check --quiet .; then
  echo "format check failed: run 'ruff format .' (the files are listed above)" >&2
  exit 1
fi
if ! mypy; then
  echo "type check failed: mypy's errors are listed above ([tool.mypy] in pyproject.toml)" >&2
  exit 1
fi
python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
