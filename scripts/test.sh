#!/usr/bin/env bash
# Run every test (unit, integration, end to end) against real services.
# pytest's exit code 5 ("no tests collected") is a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: no tests were collected" >&2
  exit 1
fi
exit "$rc"
