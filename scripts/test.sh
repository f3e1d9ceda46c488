#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint (ruff), type-check (mypy) and run the whole test suite.
#   ./scripts/test.sh            everything (what CI runs)
#   ./scripts/test.sh --fast     lint, types and the fast lane: tests marked neither mqtt nor slow (in-process)
# Other arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
SELECT=()
if [ "${1:-}" = "--fast" ]; then
  shift
  SELECT=(-m "not mqtt and not slow")
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest ${SELECT[@]+"${SELECT[@]}"} "$@"
