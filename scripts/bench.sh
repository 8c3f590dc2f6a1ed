#!/usr/bin/env bash
# Runs every benchmark built in BUILD_DIR and prints their tables:
# bench_proto (sans-I/O hot paths), bench_fanout (one message to 10,000
# connections on one loop, docs/benchmarks.md "Fan-out"), then the echo
# comparison, then memory per idle connection per endpoint, then the gateway fan-out (duplex serve against Node ws), then
# the cross-node fan-out (three duplex serve --redis nodes, one redis-server).
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

# User memory per idle connection on duplex serve's /echo and /ws endpoints
# (issue 13; docs/benchmarks.md "Memory per idle connection").
"$(dirname "$0")/bench_idle.sh" "$build"

# Gateway fan-out: duplex serve --workers 1 against a Node ws broadcast server.
"$(dirname "$0")/bench_gateway.sh" "$build"

# Instructions per echoed message and per handshake under callgrind (issue 13's
# stable measure), duplex against libwebsockets and the plain TCP echo.
"$(dirname "$0")/bench_instr.sh" "$build"

# permessage-deflate: ratio, wire bytes, CPU and memory against Node ws; fan-out.
"$(dirname "$0")/bench_deflate.sh" "$build"

# Cross-node fan-out: three duplex serve --redis nodes and one redis-server.
"$(dirname "$0")/bench_cluster.sh" "$build"

# Scale: cost against connections (active and idle) and handshake concurrency.
"$(dirname "$0")/bench_scale.sh" "$build"

# A million connections (scripts/bench_million.sh, also `make bench-million`):
# only when asked, it takes minutes and most of the machine's memory.
if [[ ${DX_BENCH_MILLION:-0} != 0 ]]; then
  "$(dirname "$0")/bench_million.sh" "$build"
fi
