#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the end-to-end demo. Extra arguments go to `edgefleet demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/edgefleet" demo "$@"
