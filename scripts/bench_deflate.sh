#!/usr/bin/env bash
# permessage-deflate benchmark: duplex serve against Node `ws` (ws_echo.js,
# ws_broadcast.js with --deflate), the same Node `ws` clients
# (bench/peers/deflate_load.js) and the same realistic JSON
# (bench/peers/json_gen.js), in one run: compression ratio, bytes on the
# wire, server CPU per message (1 KiB and 16 KiB echo), memory per
# connection (off, context takeover, no context takeover), and the fan-out
# with no-context-takeover subscribers (compressed once per message) against
# context takeover (compressed per connection). scripts/bench_deflate.py
# documents the method; docs/benchmarks.md has the results.
#
#   scripts/bench_deflate.sh BUILD_DIR [--only echo,memory,fanout]
#
# BUILD_DIR holds the duplex binary (BUILD_DIR/duplex, or $DUPLEX_BIN). Node's
# `ws` comes from BUILD_DIR/bench/node-peer (scripts/bench_echo.sh installs it)
# or tests/interop/node_modules. About 4 minutes. Writes the table to
# BUILD_DIR/bench-deflate.txt and the raw rows to BUILD_DIR/bench-deflate.jsonl.
set -euo pipefail
build=${1:?usage: bench_deflate.sh BUILD_DIR [--only echo,memory,fanout]}
shift
build=$(cd "$build" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

duplex_bin=${DUPLEX_BIN:-}
if [[ -z $duplex_bin ]]; then
  for c in "$build/duplex" "$build/cmd/duplex/duplex"; do
    [[ -x $c ]] && { duplex_bin=$c; break; }
  done
fi
[[ -n $duplex_bin ]] || { echo "bench_deflate: no duplex binary in $build (or \$DUPLEX_BIN)" >&2; exit 2; }
command -v node >/dev/null || { echo "bench_deflate: node is missing (scripts/deps.sh bench)" >&2; exit 2; }
node_mods=""
for d in "$build/bench/node-peer/node_modules" "$root/tests/interop/node_modules"; do
  [[ -f $d/ws/package.json ]] && { node_mods=$d; break; }
done
[[ -n $node_mods ]] || { echo "bench_deflate: no node_modules with ws (run scripts/bench_echo.sh or npm ci in tests/interop)" >&2; exit 2; }
rm -f "$build/bench-deflate.jsonl"
exec /usr/bin/python3 "$root/scripts/bench_deflate.py" --duplex "$duplex_bin" --node-modules "$node_mods" \
  --out "$build/bench-deflate" "$@"
