#!/usr/bin/env bash
# End-to-end echo benchmark: duplex against libwebsockets, Node `ws` and a
# plain TCP echo server (the transport's ceiling), all in one run, under the
# same load, on loopback.
#
#   scripts/bench_echo.sh BUILD_DIR
#
# BUILD_DIR is a configured and built tree (make bench uses build-bench): it
# must hold the duplex binary (BUILD_DIR/duplex, BUILD_DIR/cmd/duplex/duplex
# or $DUPLEX_BIN), bench/loadgen, bench/tcp_echo and bench/lws_echo. The load
# generator of every WebSocket row is `duplex bench`; bench/loadgen --raw
# drives only the plain TCP row (duplex bench speaks WebSocket only). The
# Node peers' `ws` is installed with `npm ci` from
# bench/peers/package-lock.json into BUILD_DIR/bench/node-peer (once).
#
# Every server runs with one worker, pinned to CPU 0; the load generator is
# pinned to CPU 1. All servers are started at once (an idle one sleeps in its
# poll call) so the repetitions interleave them. Rows (docs/benchmarks.md):
#   1. 100 conns x 16 B, depth 16     2. same, depth 64
#   3. 100 conns x 16 B, one at a time 4. 10 conns x 64 KiB, depth 2
#   5. server RSS per idle connection (10,000 connections, fresh process)
#   6. server CPU time per handshake (open, close handshake, TCP close)
#   7. client side: duplex bench vs a Node `ws` client (bench/peers/ws_client.js),
#      the row-1 load against the same duplex serve; client CPU per message
# Rows 1-4, 6 and 7 run BENCH_REPEAT times, interleaved; the median run is
# shown with the spread (max-min)/median. For row 1 also: server syscalls
# per message (perf's raw_syscalls tracepoint, else strace) and server CPU
# microseconds per message.
#
# Environment: BENCH_SECONDS (measured seconds per run, default 3),
# BENCH_WARMUP (default 1), BENCH_REPEAT (default 3), BENCH_IDLE_CONNS
# (default 10000), BENCH_HANDSHAKES (default 5000), BENCH_PORT (first port,
# default 19500). About 4 minutes with the defaults.
# The table is printed and written to BUILD_DIR/bench-echo.txt, and charted
# by scripts/bench_chart.sh into BUILD_DIR/bench-echo.png when gnuplot is
# installed. Every process started here is stopped by PID on exit. Exit 1 if
# any run counted errors.
set -euo pipefail

build=${1:?usage: bench_echo.sh BUILD_DIR}
build=$(cd "$build" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$build/bench
out=$build/bench-echo.txt

SECS=${BENCH_SECONDS:-3}
WARM=${BENCH_WARMUP:-1}
REPS=${BENCH_REPEAT:-3}
IDLE_N=${BENCH_IDLE_CONNS:-10000}
HS_N=${BENCH_HANDSHAKES:-5000}
port=${BENCH_PORT:-19500}
HOST=127.0.0.1

work=$(mktemp -d /tmp/bench-echo.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench_echo: $*" >&2; }
forget_pid() { # removes $1 from pids
  local keep=() p
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]+"${keep[@]}"}")
}

for f in loadgen tcp_echo lws_echo; do
  [[ -x $bin/$f ]] || { log "$bin/$f is missing: build BUILD_DIR first (make bench)"; exit 2; }
done
duplex_bin=${DUPLEX_BIN:-}
if [[ -z $duplex_bin ]]; then
  for c in "$build/duplex" "$build/cmd/duplex/duplex"; do
    [[ -x $c ]] && { duplex_bin=$c; break; }
  done
fi
[[ -n $duplex_bin ]] || { log "no duplex binary in $build (or \$DUPLEX_BIN): it serves and, as duplex bench, loads"; exit 2; }

# ---- pinning -----------------------------------------------------------------
if (($(nproc) >= 2)) && command -v taskset >/dev/null; then
  PIN_SERVER=(taskset -c 0)
  PIN_LOAD=(taskset -c 1)
  pinning="server on CPU 0, load generator on CPU 1"
else
  PIN_SERVER=()
  PIN_LOAD=()
  pinning="no pinning (needs 2 CPUs and taskset)"
fi

# ---- /proc readers -------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# On-CPU nanoseconds of every thread of a process: sum_exec_runtime from
# /proc/PID/task/*/schedstat (ns resolution); else utime+stime of
# /proc/PID/stat (clock ticks, 10 ms).
if [[ -r /proc/self/schedstat ]]; then
  cpu_source="sum of /proc/PID/task/*/schedstat run time (ns)"
  cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
else
  cpu_source="utime+stime of /proc/PID/stat (${CLK_TCK} Hz ticks)"
  cpu_ns() { awk -v t="$CLK_TCK" '{sub(/^.*\) /, ""); printf "%.0f\n", ($12 + $13) * 1e9 / t}' /proc/"$1"/stat; }
fi
rss_kb() { awk '/^VmRSS:/ {print $2}' /proc/"$1"/status; }

# Syscall counter: perf's raw_syscalls tracepoint when it works here (it does
# not need hardware counters), else strace -c over a separate run.
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter true 2>&1 | grep -q '^[0-9]'; then
  sys_tool=perf
  sys_source="perf stat -e raw_syscalls:sys_enter -p PID, over a separate ${SECS}s run of row 1 (all threads)"
elif command -v strace >/dev/null; then
  sys_tool=strace
  sys_source="strace -c -f -p PID over a separate short run of row 1 (perf unusable here; strace slows the server, the count per message still holds)"
else
  sys_tool=none
  sys_source="no perf or strace: not measured"
fi

# json FIELD LINE: a number or string field of a flat JSON line (duplex bench
# --json, loadgen, ws_client.js).
json() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2"; }

# ---- the node peer -----------------------------------------------------------------
node_dir=$bin/node-peer
node_ok=0
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [[ ! -f $node_dir/node_modules/ws/package.json ||
        $root/bench/peers/package-lock.json -nt $node_dir/package-lock.json ]]; then
    mkdir -p "$node_dir"
    cp "$root/bench/peers/package.json" "$root/bench/peers/package-lock.json" "$node_dir/"
    log "installing the node peer's dependencies (npm ci in $node_dir)"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || true
  fi
  [[ -f $node_dir/node_modules/ws/package.json ]] && node_ok=1
fi

# ---- servers ----------------------------------------------------------------------
servers=(duplex lws node tcp)
declare -A NAME=([duplex]="duplex" [lws]="libwebsockets" [node]="node ws" [tcp]="tcp_echo")
declare -A SKIP=()
((node_ok)) || SKIP[node]="node/npm or the ws package unavailable"

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# start_server KEY: starts it pinned on a free port; sets SPID and SPORT.
start_server() {
  while ! port_free "$port"; do port=$((port + 1)); done
  SPORT=$port
  port=$((port + 1))
  local cmd
  case $1 in
    duplex) cmd=("$duplex_bin" serve --host "$HOST" --port "$SPORT" --workers 1) ;;
    lws) cmd=("$bin/lws_echo" --host "$HOST" --port "$SPORT") ;;
    node) cmd=(env NODE_PATH="$node_dir/node_modules" node "$root/bench/peers/ws_echo.js" --host "$HOST" --port "$SPORT") ;;
    tcp) cmd=("$bin/tcp_echo" --host "$HOST" --port "$SPORT") ;;
  esac
  # taskset and env exec the command: the PID is the server's.
  "${PIN_SERVER[@]}" "${cmd[@]}" 2>>"$work/$1.log" &
  SPID=$!
  pids+=("$SPID")

  for _ in $(seq 100); do
    kill -0 "$SPID" 2>/dev/null || { log "${NAME[$1]} exited at start: $(tail -3 "$work/$1.log")"; return 1; }
    port_free "$SPORT" || return 0
    sleep 0.1
  done
  log "${NAME[$1]} does not listen on $SPORT after 10 s"
  return 1
}

stop_server() {
  kill -TERM "$1" 2>/dev/null || true

  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}

errors_total=0
# LG[key]: the load generator of a server: duplex bench for every WebSocket
# server, loadgen --raw for the plain TCP one.
declare -A LG=()
# loadgen KEY ARGS...: runs KEY's load generator pinned, bounded; prints its
# JSON line (runs in a command substitution: the caller counts errors with
# check_errors).
loadgen() {
  local k=$1 line rc=0
  shift
  # shellcheck disable=SC2086 # LG is a command line
  line=$(timeout 120 "${PIN_LOAD[@]}" ${LG[$k]} "$@" 2>>"$work/loadgen.log") || rc=$?
  if [[ -z $line ]]; then
    log "${LG[$k]} $* failed (exit $rc): $(tail -2 "$work/loadgen.log")"
    line='{"errors":1}'
  fi
  echo "$line"
}
check_errors() { # WHAT LINE
  local e
  e=$(json errors "$2")
  ((${e:-1} == 0)) || { errors_total=$((errors_total + 1)); log "$1: errors: $2"; }
}

# R[key,row,field]
declare -A R=()

url_for() { # KEY PORT
  if [[ $1 == tcp ]]; then echo "tcp://$HOST:$2"; else echo "ws://$HOST:$2/echo"; fi
}

rows_load=(1 2 3 4)
declare -A ROW_ARGS=([1]="-c 100 --size 16 -d 16" [2]="-c 100 --size 16 -d 64" [3]="-c 100 --size 16 -d 1" [4]="-c 10 --size 65536 -d 2")
declare -A ROW_TITLE=(
  [1]="100 connections x 16 B, pipelined depth 16"
  [2]="100 connections x 16 B, pipelined depth 64"
  [3]="100 connections x 16 B, one at a time (depth 1)"
  [4]="10 connections x 64 KiB, depth 2"
  [5]="server RSS per idle connection, $IDLE_N connections"
  [6]="server CPU per handshake ($HS_N x open + close handshake, 8 at a time)"
  [7]="client side: 100 connections x 16 B, depth 16, both clients against the same duplex serve")

declare -A PID=() URL=()

# Row 5, on the fresh process, so freed buffers of later rows cannot hide
# the growth. idle_row KEY
idle_row() {
  local k=$1 pid=${PID[$1]} before after line open lg ready=$work/ready-$1
  # Warm-up: a few connections first, so one-time costs (code pages of the
  # TLS/crypto library touched by the first handshake, lazy allocations) sit
  # in the baseline of every server instead of being divided among the idle
  # connections.
  # shellcheck disable=SC2086 # LG is a command line
  timeout 30 "${PIN_LOAD[@]}" ${LG[$k]} --idle -c 16 -t 1 "${URL[$k]}" >/dev/null 2>>"$work/loadgen.log" || true
  sleep 0.3
  # shellcheck disable=SC2086 # LG is a command line
  timeout 120 "${PIN_LOAD[@]}" ${LG[$k]} --idle -c "$IDLE_N" -t 3 --ready-file "$ready" \
    "${URL[$k]}" >"$work/idle-$k.json" 2>>"$work/loadgen.log" &
  lg=$!
  pids+=("$lg")
  before=$(rss_kb "$pid")
  for _ in $(seq 600); do [[ -f $ready ]] && break; kill -0 "$lg" 2>/dev/null || break; sleep 0.1; done
  sleep 0.5
  after=$(rss_kb "$pid")
  wait "$lg" || true
  forget_pid "$lg"
  line=$(cat "$work/idle-$k.json")
  [[ -n $line ]] || line='{"errors":1}'
  open=$(json open "$line")
  if [[ -f $ready && ${open:-0} -gt 0 && $(json errors "$line") == 0 ]]; then
    R[$k,5,v]=$(awk -v a="$after" -v b="$before" -v n="$open" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
    R[$k,5,info]="$((before / 1024)) -> $((after / 1024)) MiB"
  else
    errors_total=$((errors_total + 1))
    log "${NAME[$k]}: idle run failed: $line"
  fi
  log "${NAME[$k]} row 5: ${R[$k,5,v]:-?} bytes/conn"
}

# Rows 1-4, repetition REP: load_row KEY ROW REP
load_row() {
  local k=$1 r=$2 i=$3 pid=${PID[$1]} line c0 c1 t0 t1 total
  c0=$(cpu_ns "$pid")
  t0=$(date +%s%N)
  # shellcheck disable=SC2086 # ROW_ARGS is meant to split
  line=$(loadgen "$k" ${ROW_ARGS[$r]} -t "$SECS" --warmup "$WARM" "${URL[$k]}")
  t1=$(date +%s%N)
  c1=$(cpu_ns "$pid")
  check_errors "${NAME[$k]} row $r" "$line"
  R[$k,$r,$i,v]=$(json msgs_per_s "$line")
  R[$k,$r,$i,mb]=$(json mb_per_s "$line")
  R[$k,$r,$i,p50]=$(json lat_p50_us "$line")
  R[$k,$r,$i,p99]=$(json lat_p99_us "$line")
  R[$k,$r,$i,lgcpu]=$(json cpu_pct "$line")
  R[$k,$r,$i,err]=$(json errors "$line")
  total=$(json total_msgs "$line")
  if [[ -n $total && $total -gt 0 ]]; then
    R[$k,$r,$i,cpumsg]=$(awk -v c=$((c1 - c0)) -v n="$total" 'BEGIN {printf "%.2f", c / n / 1e3}')
    R[$k,$r,$i,srvcpu]=$(awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", 100 * c / t}')
  fi
  log "${NAME[$k]} row $r run $i: ${R[$k,$r,$i,v]:-?} msgs/s"
}

# Syscalls per message of row 1, in a separate run so that tracing cannot
# slow the measured ones: sys_row KEY
sys_row() {
  local k=$1 pid=${PID[$1]} sysf=$work/sys-$1.txt tracer n_sys="" line total
  if [[ $sys_tool == perf ]]; then
    perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$sysf" &
  else
    strace -c -f -q -p "$pid" -o "$sysf" &
  fi
  tracer=$!
  pids+=("$tracer")
  sleep 0.5
  # shellcheck disable=SC2086
  line=$(loadgen "$k" ${ROW_ARGS[1]} -t "$SECS" --warmup 0.5 "${URL[$k]}")
  check_errors "${NAME[$k]} row 1 ($sys_tool)" "$line"
  kill -INT "$tracer" 2>/dev/null || true
  wait "$tracer" 2>/dev/null || true
  forget_pid "$tracer"
  if [[ $sys_tool == perf ]]; then
    n_sys=$(awk -F, '/raw_syscalls:sys_enter/ {print $1; exit}' "$sysf" 2>/dev/null)
  else
    n_sys=$(awk '$NF == "total" {print $(NF-1); exit}' "$sysf" 2>/dev/null)
  fi
  total=$(json total_msgs "$line")
  if [[ $n_sys =~ ^[0-9]+$ && -n $total && $total -gt 0 ]]; then
    R[$k,1,sys]=$(awk -v s="$n_sys" -v n="$total" 'BEGIN {printf "%.2f", s / n}')
  fi
}

# Row 6, repetition REP: hs_row KEY REP
hs_row() {
  local k=$1 i=$2 pid=${PID[$1]} line c0 c1 ok extra=()
  # tcp_echo: the TCP floor of a handshake (issue 13): connect, a message the
  # size of an upgrade request echoed (as the request and its 101), close.
  [[ $k == tcp ]] && extra=(--size 200)
  c0=$(cpu_ns "$pid")
  # shellcheck disable=SC2086
  line=$(loadgen "$k" --handshakes "$HS_N" --concurrency 8 "${extra[@]}" "${URL[$k]}")
  sleep 0.3 # the server may still be accepting or closing (tcp_echo's accept lags the client)
  c1=$(cpu_ns "$pid")
  check_errors "${NAME[$k]} row 6" "$line"
  ok=$(json ok "$line")
  if [[ -n $ok && $ok -gt 0 ]]; then
    R[$k,6,$i,v]=$(awk -v c=$((c1 - c0)) -v n="$ok" 'BEGIN {printf "%.1f", c / n / 1e3}')
    R[$k,6,$i,info]="$(json per_s "$line")/s, p50 $(json hs_p50_us "$line") us"
  fi
}

# Row 7, repetition REP: client_row CLIENT REP, CLIENT = dxb (duplex bench)
# or nodec (bench/peers/ws_client.js), the row-1 load against duplex serve,
# the client pinned where the load generator runs. Results go to R[CLIENT,7,...].
client_row() {
  local k=$1 i=$2 pid=${PID[duplex]} line c0 c1 t0 t1 rc=0
  c0=$(cpu_ns "$pid")
  t0=$(date +%s%N)
  # shellcheck disable=SC2086 # ROW_ARGS is meant to split
  if [[ $k == dxb ]]; then
    line=$(loadgen duplex ${ROW_ARGS[1]} -t "$SECS" --warmup "$WARM" "${URL[duplex]}")
  else
    line=$(timeout 120 "${PIN_LOAD[@]}" env NODE_PATH="$node_dir/node_modules" node "$root/bench/peers/ws_client.js" \
      ${ROW_ARGS[1]} -t "$SECS" --warmup "$WARM" "${URL[duplex]}" 2>>"$work/ws_client.log") || rc=$?
    [[ -n $line ]] || { log "ws_client.js failed (exit $rc): $(tail -2 "$work/ws_client.log")"; line='{"errors":1}'; }
  fi
  t1=$(date +%s%N)
  c1=$(cpu_ns "$pid")
  check_errors "${CNAME[$k]} row 7" "$line"
  R[$k,7,$i,v]=$(json msgs_per_s "$line")
  R[$k,7,$i,p50]=$(json lat_p50_us "$line")
  R[$k,7,$i,p99]=$(json lat_p99_us "$line")
  R[$k,7,$i,lgcpu]=$(json cpu_pct "$line")
  R[$k,7,$i,err]=$(json errors "$line")
  R[$k,7,$i,srvcpu]=$(awk -v c=$((c1 - c0)) -v t=$((t1 - t0)) 'BEGIN {printf "%.0f", 100 * c / t}')
  R[$k,7,$i,cpumsg]=$(awk -v p="${R[$k,7,$i,lgcpu]:-}" -v m="${R[$k,7,$i,v]:-}" \
    'BEGIN { if (m + 0 > 0 && p != "") printf "%.2f", p / 100 / m * 1e6; else print "" }')
  log "${CNAME[$k]} row 7 run $i: ${R[$k,7,$i,v]:-?} msgs/s, client ${R[$k,7,$i,lgcpu]:-?}% CPU"
}
declare -A CNAME=([dxb]="duplex bench" [nodec]="node ws client")
clients=(dxb)
((node_ok)) && clients+=(nodec)

# pick_median KEY ROW: copies the fields of the run with the median value to
# R[KEY,ROW,field] and the spread (max-min)/median to R[KEY,ROW,spread].
pick_median() {
  local k=$1 r=$2 i best f
  local -a vals=()
  for ((i = 1; i <= REPS; i++)); do
    [[ -n ${R[$k,$r,$i,v]:-} ]] && vals+=("${R[$k,$r,$i,v]} $i")
  done
  ((${#vals[@]})) || return 0
  best=$(printf '%s\n' "${vals[@]}" | sort -g | awk '{a[NR] = $2} END {print a[int((NR + 1) / 2)]}')
  for f in v mb p50 p99 lgcpu err cpumsg srvcpu info; do
    [[ -n ${R[$k,$r,$best,$f]:-} ]] && R[$k,$r,$f]=${R[$k,$r,$best,$f]}
  done
  R[$k,$r,spread]=$(printf '%s\n' "${vals[@]}" | sort -g |
    awk '{v[NR] = $1} END {m = v[int((NR + 1) / 2)]; if (NR > 1 && m > 0) printf "%.0f%%", 100 * (v[NR] - v[1]) / m; else print "-"}')
}

started=$(date +%s)
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN {exit !(l > 0.5)}'; then
  log "warning: load average $load: other work on this machine will skew the figures"
fi

# Every server runs for the whole benchmark (an idle one sleeps in its poll
# call), so the repetitions can interleave them: drift in the machine's speed
# then spreads over all of them instead of favouring one.
active=()
for k in "${servers[@]}"; do
  [[ -n ${SKIP[$k]:-} ]] && { log "skipping ${NAME[$k]}: ${SKIP[$k]}"; continue; }
  if start_server "$k"; then
    PID[$k]=$SPID
    URL[$k]=$(url_for "$k" "$SPORT")
    LG[$k]="$duplex_bin bench --json"
    [[ $k == tcp ]] && LG[$k]="$bin/loadgen --raw"
    active+=("$k")
    log "${NAME[$k]}: pid $SPID, ${URL[$k]}"
  else
    SKIP[$k]="did not start: $(tail -1 "$work/$k.log" 2>/dev/null)"
    errors_total=$((errors_total + 1))
  fi
done
sleep 0.5
for k in "${active[@]}"; do idle_row "$k"; done
sleep 1 # let the servers reap the idle connections
for ((rep = 1; rep <= REPS; rep++)); do
  for r in "${rows_load[@]}"; do
    for k in "${active[@]}"; do load_row "$k" "$r" "$rep"; done
  done
  for k in "${active[@]}"; do hs_row "$k" "$rep"; done
  if [[ -n ${PID[duplex]:-} ]]; then
    for k in "${clients[@]}"; do client_row "$k" "$rep"; done
  fi
done
if [[ $sys_tool != none ]]; then
  for k in "${active[@]}"; do sys_row "$k"; done
fi
for k in "${clients[@]}"; do pick_median "$k" 7; done
for k in "${active[@]}"; do
  for r in 1 2 3 4 6; do pick_median "$k" "$r"; done
  stop_server "${PID[$k]}"
done

# ---- the table ----------------------------------------------------------------------
ratio() { # A B -> "1.23x" or "-"
  awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx\n", a / b }'
}
cols=(lws node tcp)
{
  echo "duplex end-to-end echo benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs"
  echo "one worker per server; $pinning; loopback; each run ${SECS}s measured after ${WARM}s warm-up;"
  echo "rows 1-4, 6 and 7: median of $REPS interleaved runs, spread = (max - min) / median"
  echo "load average at start: $load"
  echo "load generator: $duplex_bin bench for the WebSocket servers, $bin/loadgen --raw for tcp_echo"
  echo "  (both one thread, epoll, verify every echoed byte)"
  for k in "${servers[@]}"; do
    [[ -n ${SKIP[$k]:-} ]] && echo "  ${NAME[$k]}: ${SKIP[$k]}"
  done
  echo "MB/s = echoed payload bytes per second (1 MB = 10^6 B); ratios = this server / that one;"
  echo "p50/p99 = send-to-echo latency of each message (histogram, ~6% buckets)"
  for r in 1 2 3 4; do
    echo
    echo "== $r. ${ROW_TITLE[$r]}"
    printf '%-14s %10s %6s %8s %8s %8s %4s %4s %3s %7s %7s %7s\n' server msgs/s spread MB/s p50_us p99_us \
      srv% lg% err "vs lws" "vs node" "vs tcp"
    for k in "${servers[@]}"; do
      if [[ -n ${SKIP[$k]:-} ]]; then printf '%-14s %s\n' "${NAME[$k]}" "(${SKIP[$k]})"; continue; fi
      v=${R[$k,$r,v]:-}
      printf '%-14s %10s %6s %8s %8s %8s %4s %4.0f %3s' "${NAME[$k]}" "${v:--}" "${R[$k,$r,spread]:--}" \
        "${R[$k,$r,mb]:--}" "${R[$k,$r,p50]:--}" "${R[$k,$r,p99]:--}" "${R[$k,$r,srvcpu]:--}" \
        "${R[$k,$r,lgcpu]:-0}" "${R[$k,$r,err]:--}"
      for c in "${cols[@]}"; do printf ' %7s' "$(ratio "$v" "${R[$c,$r,v]:-}")"; done
      echo
    done
  done
  echo
  echo "srv% / lg%: CPU use of the server's core / of the load generator's core during the row (100 = saturated)"
  echo
  echo "== rows 1-3 per message, server side"
  printf '%-14s %12s %12s %12s %12s %12s %12s\n' server syscalls/msg "cpu_us d16" server_cpu% "cpu_us d64" "d64-tcp_ns" \
    "cpu_us d1"
  for k in "${servers[@]}"; do
    [[ -n ${SKIP[$k]:-} ]] && continue
    d64=${R[$k,2,cpumsg]:-}
    diff=-
    [[ -n $d64 && -n ${R[tcp,2,cpumsg]:-} ]] && diff=$(awk -v a="$d64" -v b="${R[tcp,2,cpumsg]}" 'BEGIN {printf "%+.0f", (a - b) * 1e3}')
    printf '%-14s %12s %12s %12s %12s %12s %12s\n' "${NAME[$k]}" "${R[$k,1,sys]:--}" "${R[$k,1,cpumsg]:--}" \
      "${R[$k,1,srvcpu]:--}" "${d64:--}" "$diff" "${R[$k,3,cpumsg]:--}"
  done
  echo "syscalls: $sys_source"
  echo "cpu: $cpu_source, over the whole load generator run (warm-up included) / every echoed message;"
  echo "     d16 / d64 / d1 = rows 1 / 2 / 3 (the median run of each); d64-tcp_ns: row 2's cost above tcp_echo's, in ns"
  echo "     (issue 13's target: within 60 ns)"
  for r in 5 6; do
    echo
    echo "== $r. ${ROW_TITLE[$r]} (lower is better)"
    if [[ $r == 5 ]]; then unit="bytes/conn"; else unit="us/handshake"; fi
    printf '%-14s %12s %6s %-24s %7s %7s %7s\n' server "$unit" spread "" "vs lws" "vs node" "vs tcp"
    for k in "${servers[@]}"; do
      if [[ -n ${SKIP[$k]:-} ]]; then printf '%-14s %s\n' "${NAME[$k]}" "(${SKIP[$k]})"; continue; fi
      v=${R[$k,$r,v]:-}
      printf '%-14s %12s %6s %-24s' "${NAME[$k]}" "${v:--}" "${R[$k,$r,spread]:--}" "${R[$k,$r,info]:-}"
      for c in "${cols[@]}"; do printf ' %7s' "$(ratio "$v" "${R[$c,$r,v]:-}")"; done
      echo
    done
  done
  echo
  echo "row 5: VmRSS of the server before and after opening the connections (handshake done, no traffic),"
  echo "       the baseline taken after a warm-up of 16 connections;"
  echo "       tcp_echo's connections are plain TCP. Kernel socket memory is not in RSS."
  echo "row 6: server CPU ($cpu_source) / handshakes; for tcp_echo: connect, 200 bytes echoed, close (the floor)."
  echo
  echo "== 7. ${ROW_TITLE[7]}"
  printf '%-16s %10s %6s %8s %8s %5s %7s %5s %3s %8s\n' client msgs/s spread p50_us p99_us cli% us/msg srv% err "vs node"
  for k in dxb nodec; do
    if [[ $k == nodec ]] && ! ((node_ok)); then printf '%-16s %s\n' "${CNAME[$k]}" "(node/npm or ws unavailable)"; continue; fi
    v=${R[$k,7,v]:-}
    printf '%-16s %10s %6s %8s %8s %5s %7s %5s %3s %8s\n' "${CNAME[$k]}" "${v:--}" "${R[$k,7,spread]:--}" \
      "${R[$k,7,p50]:--}" "${R[$k,7,p99]:--}" "${R[$k,7,lgcpu]:--}" "${R[$k,7,cpumsg]:--}" "${R[$k,7,srvcpu]:--}" \
      "${R[$k,7,err]:--}" "$(ratio "$v" "${R[nodec,7,v]:-}")"
  done
  echo "row 7: cli% = the client's CPU (its own getrusage / process.cpuUsage) over the measured window;"
  echo "       us/msg = client CPU microseconds per echoed message; srv% = duplex serve's core"
  echo "whole run: $(($(date +%s) - started)) s"
} | tee "$out"
if command -v gnuplot >/dev/null; then
  "$root/scripts/bench_chart.sh" "$out" || log "chart not written (scripts/bench_chart.sh failed)"
else
  log "gnuplot not installed (gnuplot-nox): no chart"
fi

if ((errors_total > 0)); then
  log "$errors_total run(s) counted errors; server logs:"
  tail -n 5 "$work"/*.log >&2 || true
  exit 1
fi
log "table written to $out"
