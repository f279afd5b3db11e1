#!/usr/bin/env bash
# Run every test (unit, integration, end to end) against real services.
# pytest's exit code 5 ("no tests collected") is a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q "$@"
rc=$?
# The hot modules run compiled when they could be built: their unit tests run once more
# as Python, the fallback every machine without a compiler runs.
if [ "$#" -eq 0 ] && [ "$rc" -eq 0 ]; then
  ISPSTREAM_PURE_PYTHON=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit
  rc=$?
fi
if [ "$rc" -eq 5 ]; then
  echo "test.sh: no tests were collected" >&2
  exit 1
fi
exit "$rc"
