#!/usr/bin/env bash
# User memory per idle, handshaken connection of `duplex serve`, on each of
# the gateway's WebSocket endpoints: /echo (the library's connection and the
# gateway's per-connection record) and /ws (raw dialect, no subscription:
# the deferred upgrade, the per-address count and the record too).
#
#   scripts/bench_idle.sh BUILD_DIR
#
# Method: bench_echo.sh's row 5 (docs/benchmarks.md "RSS per idle
# connection"), one fresh `duplex serve --workers 1` per endpoint: 16
# connections opened and closed first (one-time costs land in the
# baseline), VmRSS read, IDLE_CONNS (10,000) connections opened with
# `duplex bench --idle --ready-file` and held, VmRSS read again once all
# completed the opening handshake; the difference divided by their number.
# The gateway's per-address limits are turned off (every connection comes
# from 127.0.0.1). Environment: BENCH_IDLE_CONNS (10000), BENCH_PORT
# (first port tried, 19600). Prints one line per endpoint; exit 1 if a run
# failed. Every process started here is stopped by PID on exit.
set -euo pipefail

build=${1:?usage: bench_idle.sh BUILD_DIR}
build=$(cd "$build" && pwd)
N=${BENCH_IDLE_CONNS:-10000}
port=${BENCH_PORT:-19600}
HOST=127.0.0.1
duplex_bin=${DUPLEX_BIN:-}
for c in "$build/duplex" "$build/cmd/duplex/duplex"; do
  [[ -z $duplex_bin && -x $c ]] && duplex_bin=$c
done
[[ -n $duplex_bin ]] || { echo "bench_idle: no duplex binary in $build" >&2; exit 2; }

work=$(mktemp -d /tmp/bench-idle.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if (($(nproc) >= 2)) && command -v taskset >/dev/null; then
  PIN_SERVER=(taskset -c 0)
  PIN_LOAD=(taskset -c 1)
else
  PIN_SERVER=()
  PIN_LOAD=()
fi
port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
rss_kb() { awk '/^VmRSS:/ {print $2}' /proc/"$1"/status; }
json() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2"; }

rc=0
for path in /echo /ws; do
  while ! port_free "$port"; do port=$((port + 1)); done
  sport=$port
  port=$((port + 1))
  "${PIN_SERVER[@]}" "$duplex_bin" serve --host "$HOST" --port "$sport" --workers 1 --log-level error \
    --conns-per-ip off --handshakes-per-ip off --max-handshaking off >>"$work/serve.log" 2>&1 &
  spid=$!
  pids+=("$spid")
  for _ in $(seq 100); do port_free "$sport" || break; sleep 0.1; done
  url="ws://$HOST:$sport$path"
  timeout 30 "${PIN_LOAD[@]}" "$duplex_bin" bench --json --no-progress --idle -c 16 -t 0.2 "$url" \
    >/dev/null 2>>"$work/load.log" || true
  sleep 0.3
  before=$(rss_kb "$spid")
  ready=$work/ready${path//\//_}
  timeout 120 "${PIN_LOAD[@]}" "$duplex_bin" bench --json --no-progress --idle -c "$N" -t 2 \
    --ready-file "$ready" "$url" >"$work/idle.json" 2>>"$work/load.log" &
  lg=$!
  pids+=("$lg")
  for _ in $(seq 1200); do [[ -f $ready ]] && break; kill -0 "$lg" 2>/dev/null || break; sleep 0.1; done
  sleep 0.5
  after=$(rss_kb "$spid")
  wait "$lg" || true
  line=$(cat "$work/idle.json")
  open=$(json open "$line")
  if [[ -f $ready && ${open:-0} -gt 0 && $(json errors "$line") == 0 ]]; then
    awk -v a="$after" -v b="$before" -v n="$open" -v p="$path" \
      'BEGIN {printf "duplex serve %-5s %6.0f bytes/conn (%d conns, VmRSS %d -> %d KiB)\n", p, (a - b) * 1024 / n, n, b, a}'
  else
    echo "bench_idle: $path run failed: $line $(tail -2 "$work/load.log")" >&2
    rc=1
  fi
  kill -TERM "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
done
exit $rc
