#!/usr/bin/env bash
# User-space instructions per echoed message and per handshake, counted by
# valgrind's callgrind in the server process: the number that stays stable
# on a noisy machine (perf's hardware counters are not available on this
# VM), printed beside the echo benchmark's ratios (docs/benchmarks.md
# "Instructions per message").
#
#   scripts/bench_instr.sh BUILD_DIR
#
# BUILD_DIR as for bench_echo.sh (a Release build: -O3). Servers: duplex
# serve --workers 1 (/echo), libwebsockets (bench/lws_echo) and the plain
# epoll TCP echo (bench/tcp_echo, the floor). Each runs under callgrind,
# pinned to CPU 0; the load generator (duplex bench, or loadgen --raw for
# tcp_echo) on CPU 1. Echo rows: 100 connections x 16 B at depth 1, 16, 64:
# once every connection is established and INSTR_WARMUP (3 s) has passed,
# callgrind's counters are zeroed, and INSTR_WINDOW (5 s) later dumped; the
# instructions of that window are divided by the messages echoed in it,
# counted exactly from the same dump (the calls of the function the server
# runs once per echoed message: dx_conn_send, lws_write); tcp_echo, which
# echoes bytes, by the load generator's rate times the window. Handshake row: counters zeroed, INSTR_HANDSHAKES (1000)
# connections opened and closed 8 at a time, dumped: instructions / N (for
# tcp_echo: accept, 200 bytes echoed, close: the TCP floor).
#
# Instructions are what the server's threads executed in user space,
# valgrind's own cost excluded; kernel work is not counted. About 3 minutes.
# Every process started here is stopped by PID on exit.
set -euo pipefail

build=${1:?usage: bench_instr.sh BUILD_DIR}
build=$(cd "$build" && pwd)
bin=$build/bench
out=$build/bench-instr.txt
WARM=${INSTR_WARMUP:-3}
WIN=${INSTR_WINDOW:-5}
HS_N=${INSTR_HANDSHAKES:-1000}
port=${BENCH_PORT:-19700}
HOST=127.0.0.1
CONNS=100

work=$(mktemp -d /tmp/bench-instr.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "bench_instr: $*" >&2; }

command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
  { log "valgrind (callgrind) is missing: scripts/deps.sh bench installs it"; exit 2; }
for f in loadgen tcp_echo lws_echo; do
  [[ -x $bin/$f ]] || { log "$bin/$f is missing: build BUILD_DIR first (make bench)"; exit 2; }
done
duplex_bin=${DUPLEX_BIN:-}
for c in "$build/duplex" "$build/cmd/duplex/duplex"; do
  [[ -z $duplex_bin && -x $c ]] && duplex_bin=$c
done
[[ -n $duplex_bin ]] || { log "no duplex binary in $build"; exit 2; }

if (($(nproc) >= 2)) && command -v taskset >/dev/null; then
  PIN_SERVER=(taskset -c 0)
  PIN_LOAD=(taskset -c 1)
else
  PIN_SERVER=()
  PIN_LOAD=()
fi

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
json() { # FIELD LINE
  sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p" <<<"$2"
}
established() { # PORT: established server-side connections
  ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
}

# start KEY: the server under callgrind; sets SPID, SPORT.
start() {
  while ! port_free "$port"; do port=$((port + 1)); done
  SPORT=$port
  port=$((port + 1))
  local cmd
  case $1 in
    duplex) cmd=("$duplex_bin" serve --host "$HOST" --port "$SPORT" --workers 1 --log-level error) ;;
    lws) cmd=("$bin/lws_echo" --host "$HOST" --port "$SPORT") ;;
    tcp) cmd=("$bin/tcp_echo" --host "$HOST" --port "$SPORT") ;;
  esac
  "${PIN_SERVER[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1.%p" \
    --dump-instr=no --compress-strings=no "${cmd[@]}" >>"$work/$1.log" 2>&1 &
  SPID=$!
  pids+=("$SPID")
  for _ in $(seq 300); do
    kill -0 "$SPID" 2>/dev/null || { log "$1 exited at start: $(tail -3 "$work/$1.log")"; return 1; }
    port_free "$SPORT" || return 0
    sleep 0.1
  done
  log "$1 does not listen on $SPORT after 30 s under valgrind"
  return 1
}

stop() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# dump PID TAG: dumps the counters since the last zero; prints the total Ir.
dump() {
  callgrind_control -d "$2" "$1" >/dev/null 2>&1
  local f
  for _ in $(seq 100); do
    f=$(grep -l "^desc: Trigger: dump $2\$" "$work"/cg.*."$1".* 2>/dev/null | tail -1 || true)
    [[ -n $f ]] && grep -q "^summary:" "$f" && break
    sleep 0.1
  done
  [[ -n $f ]] || { log "no callgrind dump for $2"; echo 0 -; return; }
  echo "$(awk '/^summary:/ {print $2; exit}' "$f") $f"
}

# calls FILE FN: the calls to function FN that callgrind's dump FILE counted
# (the sum of its call arcs' counts; 0 when none).
calls() {
  [[ -f $1 ]] || { echo 0; return; }
  awk -v fn="cfn=$2" '$0 == fn { getline; if ($1 ~ /^calls=/) { sub(/^calls=/, "", $1); s += $1 } }
       END { printf "%d\n", s }' "$1"
}

# The function a server calls exactly once per echoed message: its calls in
# the window are the messages echoed in it, counted exactly (the load
# generator's rate is measured over a window that is not callgrind's).
# tcp_echo echoes bytes, not messages: it keeps the rate times the window.
declare -A PER_MSG_FN=([duplex]=dx_conn_send [lws]=lws_write)

declare -A R=()
errors=0
loadgen() { # KEY ARGS...
  local k=$1
  shift
  if [[ $k == tcp ]]; then
    "${PIN_LOAD[@]}" "$bin/loadgen" --raw "$@" "tcp://$HOST:$SPORT"
  else
    "${PIN_LOAD[@]}" "$duplex_bin" bench --json --no-progress "$@" "ws://$HOST:$SPORT/echo"
  fi
}

for k in duplex lws tcp; do
  for depth in 1 16 64; do
    start "$k" || { errors=$((errors + 1)); continue; }
    dur=$((WIN + 2))
    if [[ $k == tcp ]]; then wflag=(-w "$WARM"); dflag=(-t "$dur"); else wflag=(--warmup "${WARM}s"); dflag=(-t "${dur}s"); fi
    loadgen "$k" -c "$CONNS" -d "$depth" --size 16 "${wflag[@]}" "${dflag[@]}" >"$work/load.json" 2>>"$work/load.log" &
    lpid=$!
    pids+=("$lpid")
    for _ in $(seq 600); do
      (($(established "$SPORT") >= CONNS)) && break
      sleep 0.1
    done
    sleep "$WARM"
    callgrind_control -z "$SPID" >/dev/null 2>&1
    sleep "$WIN"
    read -r ir cgf < <(dump "$SPID" "window$depth")
    wait "$lpid" || true
    line=$(cat "$work/load.json")
    rate=$(json msgs_per_s "$line")
    e=$(json errors "$line")
    ((${e:-1} == 0)) || { errors=$((errors + 1)); log "$k depth $depth: load errors: $line"; }
    stop "$SPID"
    if [[ -n ${PER_MSG_FN[$k]:-} ]]; then
      n=$(calls "$cgf" "${PER_MSG_FN[$k]}")
      how="$n calls of ${PER_MSG_FN[$k]}"
    else
      n=$(awk -v r="${rate:-0}" -v w="$WIN" 'BEGIN { printf "%.0f", r * w }')
      how="${rate:-?} msg/s x ${WIN}s"
    fi
    R[$k,$depth]=$(awk -v ir="$ir" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%.0f", ir / n; else print "-" }')
    log "$k depth $depth: $ir instructions / $how -> ${R[$k,$depth]} per message"
  done
  start "$k" || { errors=$((errors + 1)); continue; }
  callgrind_control -z "$SPID" >/dev/null 2>&1
  if [[ $k == tcp ]]; then
    line=$(loadgen tcp --handshakes "$HS_N" --size 200 2>>"$work/load.log" || true)
  else
    line=$(loadgen "$k" --handshakes "$HS_N" 2>>"$work/load.log" || true)
  fi
  sleep 0.5 # the server may still be closing the last connections
  read -r ir _ < <(dump "$SPID" handshakes)
  ok=$(json ok "$line")
  [[ -z $ok ]] && ok=$(json n "$line")
  e=$(json errors "$line")
  ((${e:-1} == 0)) || { errors=$((errors + 1)); log "$k handshakes: errors: $line"; }
  stop "$SPID"
  R[$k,hs]=$(awk -v ir="$ir" -v n="${ok:-0}" 'BEGIN { if (n > 0) printf "%.0f", ir / n; else print "-" }')
done

{
  echo "== user-space instructions in the server (callgrind), Release build"
  printf '%-28s %12s %12s %12s\n' "" duplex libwebsockets tcp_echo
  for depth in 1 16 64; do
    printf '%-28s %12s %12s %12s\n' "per 16 B echo, depth $depth" "${R[duplex,$depth]:--}" "${R[lws,$depth]:--}" "${R[tcp,$depth]:--}"
  done
  printf '%-28s %12s %12s %12s\n' "per handshake (open+close)" "${R[duplex,hs]:--}" "${R[lws,hs]:--}" "${R[tcp,hs]:--}"
  echo "targets (issue 13): <= 300 at depth 16, <= 550 at depth 1 (uWebSockets: 326, 624)"
  echo "tcp_echo handshake row: TCP accept, 200 bytes echoed (as an upgrade request and its 101), close"
} | tee "$out"
((errors == 0)) || { log "$errors runs had errors"; exit 1; }
