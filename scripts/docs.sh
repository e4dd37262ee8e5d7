#!/usr/bin/env bash
# Builds the documentation site offline into docs/_build/html, warnings as errors.
# Usage: bash scripts/docs.sh [extra sphinx-build options]
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
# shellcheck disable=SC1091
source scripts/env.sh "test,peers,lightning,tensorboard,docs" || exit 1
rm -rf docs/_build/html docs/_build/doctrees
python -m sphinx -b html -W --keep-going -n -q -d docs/_build/doctrees docs docs/_build/html "$@"
rc=$?
if [ "$rc" -eq 0 ]; then
  echo "docs: built docs/_build/html/index.html"
fi
exit "$rc"
