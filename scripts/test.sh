#!/usr/bin/env bash
# The README's test command: set everything up, then lint, type-check and run
# every test (unit, root, functional: real guests under TCG). Extra arguments
# go to pytest (e.g. scripts/test.sh tests/unit -k spec).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

echo "== lint (ruff)"
.venv/bin/ruff check lightvm tests tools images
echo "== types (mypy --strict on lightvm/)"
.venv/bin/mypy
echo "== tests (pytest)"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
exit "$rc"
