#!/usr/bin/env bash
# A million connections (issue 13, docs/scaling.md): duplex serve --procs N
# --redis, duplex bench --idle --subscribe in steps from 127.0.1.x source
# addresses, until the target (DX_MILLION_TARGET, 1000000) or the memory
# floor (DX_MILLION_FLOOR_MB, 4096 MiB available); then one broadcast to all.
# Tables on stdout and in BUILD_DIR/bench-million.txt; every process started
# is stopped by PID; sysctls changed (only with DX_MILLION_SYSCTLS) are
# restored. Minutes, and most of the machine's memory: `make bench-million`,
# or make bench with DX_BENCH_MILLION=1. Details: scripts/bench_million.py.
#   scripts/bench_million.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: bench_million.sh BUILD_DIR}
[[ -x $build/duplex ]] || { echo "bench_million: $build/duplex not built" >&2; exit 2; }
exec /usr/bin/python3 "$(dirname "$0")/bench_million.py" "$build/duplex" "$build"
