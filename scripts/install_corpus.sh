#!/usr/bin/env bash
# Install the real-model corpus (bench/real_models/corpus-requirements.txt) into .venv/edgefleet-corpus,
# a --target directory outside site-packages: the packages come without their dependencies, so `pip check`
# stays clean and none of them can shadow or replace our pinned numpy/onnxruntime. Safe to run again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/bench/real_models/corpus-requirements.txt"
TARGET="${EDGEFLEET_CORPUS_DIR:-$VENV/edgefleet-corpus}"
STAMP="$TARGET/.installed"

WANT="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing the real-model corpus into $TARGET (~50 MB of model packages)" >&2
  rm -rf "$TARGET"
  "$VENV/bin/python" -m pip install -q --no-deps --require-hashes --target "$TARGET" -r "$REQS"
  echo "$WANT" > "$STAMP"
fi
