#!/usr/bin/env bash
# Runs every benchmark built in BUILD_DIR and prints their tables.
#   scripts/bench.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: bench.sh BUILD_DIR}
for bin in "$build"/bench/bench_*; do
  [[ -x "$bin" && -f "$bin" ]] || continue
  echo "== $(basename "$bin")"
  "$bin"
done

# End-to-end echo comparison: duplex, libwebsockets, node ws, TCP ceiling.
"$(dirname "$0")/bench_echo.sh" "$build"
