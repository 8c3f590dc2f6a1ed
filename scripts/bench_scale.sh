#!/usr/bin/env bash
# Scale curves (issue 13, docs/benchmarks.md "Scale"): throughput against
# active connections, RSS against idle connections, handshakes against
# concurrency; tables on stdout and in BUILD_DIR/bench-scale.txt, charts in
# BUILD_DIR/bench-scale-*.png (gnuplot). About 40 s; every server it starts
# is stopped by PID (scripts/bench_scale.py).
#   scripts/bench_scale.sh BUILD_DIR
# Environment: DX_SCALE_RATE (messages/s in all, 20000), DX_SCALE_DURATION
# (measured seconds per point, 4), DX_SCALE_HANDSHAKES (per point, 4000),
# DX_SCALE_SOURCE_BASE (first client source address, 127.0.1.1).
set -euo pipefail
build=${1:?usage: bench_scale.sh BUILD_DIR}
[[ -x $build/duplex ]] || { echo "bench_scale: $build/duplex not built" >&2; exit 2; }
exec /usr/bin/python3 "$(dirname "$0")/bench_scale.py" "$build/duplex" "$build"
