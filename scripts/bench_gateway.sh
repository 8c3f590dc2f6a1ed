#!/usr/bin/env bash
# Gateway fan-out benchmark: `duplex serve` (one worker) against a Node `ws`
# broadcast server (bench/peers/ws_broadcast.js), the same subscribers, the
# same publisher, the same stepped rates, in one run, on loopback.
#
#   scripts/bench_gateway.sh BUILD_DIR
#
# BUILD_DIR is a configured and built tree (make bench uses build-bench): it
# must hold the duplex binary (BUILD_DIR/duplex, BUILD_DIR/cmd/duplex/duplex
# or $DUPLEX_BIN) and bench/gwload (bench/gwload.c: the readers and the
# publisher, libc only). Node's `ws` comes from BUILD_DIR/bench/node-peer
# (installed by scripts/bench_echo.sh), else tests/interop/node_modules, else
# `npm ci` from bench/peers/package-lock.json into BUILD_DIR/bench/node-peer.
#
# For each server and each mode, gwload opens SUBS subscribers on topic
# bench.t (raw dialect ws://H:P/ws?subscribe=bench.t; the Node server takes
# every connection without publish= as a subscriber), one publisher
# (ws://H:P/ws?publish=bench.t: each binary frame of 16 bytes is one
# publish) and steps the publish rate through BENCH_GW_RATES until the
# deliveries/s stop rising (two steps in a row without 5% over the best
# one), a subscriber is closed, or a step's deliveries are not all in 3 s
# after it (the table says which):
#   batched  the publisher writes k frames per write(): 16, but at least
#            4 writes a second (k = rate / 4 below 64 msgs/s);
#   alone    one frame per write(), paced.
# Then the HTTP API: POST /api/publish on one keep-alive connection, one
# request in flight, BENCH_GW_STEP_SECS long, with no subscriber and with
# BENCH_GW_API_SUBS (duplex only: Node's server has no such API).
#
# The servers are pinned to CPU 0, gwload (readers and publisher) to CPU 1.
# duplex runs with --log-level warn (info logs every HTTP request and every
# connection) and --http-max-requests 1000000000 (the API row keeps one
# connection; the default closes it after 1000 requests).
#
# Environment: BENCH_GW_SUBS (default 10000), BENCH_GW_RATES (msgs/s,
# default 2,5,10,20,50,100,200,500,1000,2000,5000), BENCH_GW_STEP_SECS (default
# 3), BENCH_GW_WARMUP (seconds of each step not measured, default 0.5),
# BENCH_GW_API_SUBS (default 1000), BENCH_PORT (first port, default 19600).
# About 3 minutes with the defaults. The table is printed and written to
# BUILD_DIR/bench-gateway.txt, the raw step lines to
# BUILD_DIR/bench-gateway.jsonl. Every process started here is stopped by
# PID on exit. Exit 1 if any run counted an error (an out-of-order or
# missing message, a closed subscriber, a failed publish).
set -euo pipefail

build=${1:?usage: bench_gateway.sh BUILD_DIR}
build=$(cd "$build" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$build/bench
out=$build/bench-gateway.txt
raw=$build/bench-gateway.jsonl

SUBS=${BENCH_GW_SUBS:-10000}
RATES=${BENCH_GW_RATES:-2,5,10,20,50,100,200,500,1000,2000,5000}
SECS=${BENCH_GW_STEP_SECS:-3}
WARM=${BENCH_GW_WARMUP:-0.5}
API_SUBS=${BENCH_GW_API_SUBS:-1000}
port=${BENCH_PORT:-19600}
HOST=127.0.0.1
KEY=bench-key

work=$(mktemp -d /tmp/bench-gateway.XXXXXX)
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

log() { echo "bench_gateway: $*" >&2; }

[[ -x $bin/gwload ]] || { log "$bin/gwload is missing: build BUILD_DIR first (make bench)"; exit 2; }
duplex_bin=${DUPLEX_BIN:-}
if [[ -z $duplex_bin ]]; then
  for c in "$build/duplex" "$build/cmd/duplex/duplex"; do
    [[ -x $c ]] && { duplex_bin=$c; break; }
  done
fi
[[ -n $duplex_bin ]] || { log "no duplex binary in $build (or \$DUPLEX_BIN)"; exit 2; }
command -v python3 >/dev/null || { log "python3 is needed to print the table"; exit 2; }

if (($(nproc) >= 2)) && command -v taskset >/dev/null; then
  PIN_SERVER=(taskset -c 0)
  PIN_LOAD=(taskset -c 1)
  pinning="server on CPU 0, gwload (readers + publisher) on CPU 1"
else
  PIN_SERVER=()
  PIN_LOAD=()
  pinning="no pinning (needs 2 CPUs and taskset)"
fi

# Syscalls: perf's tracepoints (no hardware counters needed), attached to the
# server during each step by gwload --perf.
PERF=()
sys_source="not measured (perf stat -e raw_syscalls:sys_enter does not work here)"
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_sendmsg true 2>&1 | grep -q '^[0-9]'; then
  PERF=(--perf)
  sys_source="perf stat -e raw_syscalls:sys_enter (all) and syscalls:sys_enter_{sendmsg,writev,write,sendto} (writes) -p PID"
fi

# ---- the node peer -------------------------------------------------------------
node_mods=""
if command -v node >/dev/null; then
  for d in "$bin/node-peer/node_modules" "$root/tests/interop/node_modules"; do
    [[ -f $d/ws/package.json ]] && { node_mods=$d; break; }
  done
  if [[ -z $node_mods ]] && command -v npm >/dev/null; then
    mkdir -p "$bin/node-peer"
    cp "$root/bench/peers/package.json" "$root/bench/peers/package-lock.json" "$bin/node-peer/"
    log "installing the node peer's dependencies (npm ci in $bin/node-peer)"
    (cd "$bin/node-peer" && npm ci --no-audit --no-fund --loglevel=error >&2) || true
    [[ -f $bin/node-peer/node_modules/ws/package.json ]] && node_mods=$bin/node-peer/node_modules
  fi
fi

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# start_server KEY: sets SPID and SPORT.
start_server() {
  while ! port_free "$port"; do port=$((port + 1)); done
  SPORT=$port
  port=$((port + 1))
  local cmd
  case $1 in
    # the anti-abuse limits off (docs/security.md): one publisher connection
    # steps past 1,000 msgs/s, and the subscribers come from loopback
    duplex) cmd=("$duplex_bin" serve --host "$HOST" --port "$SPORT" --workers 1 --api-key "$KEY"
                 --log-level warn --http-max-requests 1000000000
                 --msg-rate off --conns-per-ip off --handshakes-per-ip off) ;;
    node) cmd=(env NODE_PATH="$node_mods" node "$root/bench/peers/ws_broadcast.js" --host "$HOST" --port "$SPORT") ;;
  esac
  "${PIN_SERVER[@]}" "${cmd[@]}" >>"$work/$1.log" 2>&1 &
  SPID=$!
  pids+=("$SPID")
  for _ in $(seq 100); do
    kill -0 "$SPID" 2>/dev/null || { log "$1 exited at start: $(tail -3 "$work/$1.log")"; return 1; }
    port_free "$SPORT" || return 0
    sleep 0.1
  done
  log "$1 does not listen on $SPORT after 10 s"
  return 1
}

stop_server() {
  local keep=() p
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]+"${keep[@]}"}")
}

errors=0
: >"$raw"
# run KEY ARGS...: one gwload run against server KEY (a fresh process, so
# one run's leftovers cannot slow the next), its step lines appended to $raw.
run() {
  local k=$1 rc=0
  shift
  start_server "$k" || { errors=$((errors + 1)); return 0; }
  sleep 0.3
  timeout 300 "${PIN_LOAD[@]}" "$bin/gwload" --host "$HOST" --port "$SPORT" --server-pid "$SPID" --label "$k" \
    --step-secs "$SECS" --warmup "$WARM" "$@" >>"$raw" 2>>"$work/gwload.log" || rc=$?
  if ((rc != 0)); then
    errors=$((errors + 1))
    log "$k $*: gwload exit $rc: $(tail -3 "$work/gwload.log")"
  fi
  stop_server "$SPID"
}

started=$(date +%s)
started_utc=$(date -u '+%Y-%m-%d %H:%M UTC')
load=$(cut -d' ' -f1 /proc/loadavg)
servers=(duplex)
if [[ -n $node_mods ]]; then servers+=(node); else log "skipping node ws: node or the ws package unavailable"; fi
for mode in batched alone; do
  for k in "${servers[@]}"; do
    log "$k $mode: $SUBS subscribers, rates $RATES"
    run "$k" -c "$SUBS" --mode "$mode" --batch 16 --rates "$RATES" "${PERF[@]}"
  done
done
log "duplex /api/publish"
run duplex -c 0 --mode api --api-key "$KEY"
# again with perf attached, for the syscalls (its tracepoints cost a few
# percent of CPU at 12 syscalls per publish: the row above has the clean CPU)
((${#PERF[@]})) && run duplex -c 0 --mode api --api-key "$KEY" "${PERF[@]}"
run duplex -c "$API_SUBS" --mode api --api-key "$KEY" "${PERF[@]}"
elapsed=$(($(date +%s) - started))

python3 - "$raw" "$SUBS" "$SECS" "$WARM" <<EOF | tee "$out"
import json, sys
raw, subs, secs, warm = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
lines = [json.loads(l) for l in open(raw) if l.startswith('{')]
rows = [r for r in lines if 'step' in r]
stops = {(r['server'], r['mode']): r['stop'] for r in lines if 'stop' in r}
def f(v, fmt):
    return '-' if v is None or v < 0 else fmt.format(v)
def err(r):
    return r['order_err'] + r['closed'] + r['bad'] + r['pub_errors']
print("duplex gateway fan-out benchmark, $started_utc, $(uname -r), $(nproc) CPUs, load average at start $load")
print("one worker per server; $pinning; loopback; $duplex_bin serve --workers 1 vs node $(node --version 2>/dev/null || echo -) ws_broadcast.js")
print(f"{subs} subscribers (raw dialect) on one topic, 16 B binary messages; each step {secs} s, the first {warm} s not measured")
print("deliv/s = messages received by all subscribers per second; offered = publishes/s x subscribers")
print("ns/dlv = server CPU (all threads, /proc/PID/task/*/schedstat) per delivery; sys/dlv, wr/dlv = server syscalls, write-family syscalls per delivery")
print("p50/p99 = publish -> deliver latency of the step's messages (CLOCK_MONOTONIC at send in the payload)")
print("err = out-of-order or missing messages + closed subscribers + failed publishes (must be 0)")
summary = {}
for mode in ('batched', 'alone'):
    what = 'the publisher writes k frames per write() (16, at least 4 writes/s)' if mode == 'batched' else 'one frame per write(), paced (k = 1)'
    print()
    print(f"== {mode}: {what}")
    print(f"{'server':<7} {'rate':>6} {'k':>3} {'pub/s':>7} {'deliv/s':>9} {'offered':>9} {'srv%':>5} {'ns/dlv':>7} {'sys/dlv':>7} {'wr/dlv':>7} {'p50_ms':>8} {'p99_ms':>8} {'rd%':>4} {'err':>3} {'dlv vs node':>11}")
    node = {r['target_per_s']: r for r in rows if r['server'] == 'node' and r['mode'] == mode}
    for srv in ('duplex', 'node'):
        rs = [r for r in rows if r['server'] == srv and r['mode'] == mode]
        for r in rs:
            n = node.get(r['target_per_s'])
            ratio = '-' if srv == 'node' or not n or n['deliv_per_s'] <= 0 else f"{r['deliv_per_s'] / n['deliv_per_s']:.2f}x"
            print(f"{srv:<7} {r['target_per_s']:>6.0f} {r['batch']:>3} {r['pub_per_s']:>7.0f} {r['deliv_per_s']:>9.0f} {r['offered_deliv_per_s']:>9.0f} {r['srv_cpu_pct']:>5.0f} {f(r['srv_ns_per_deliv'], '{:.0f}'):>7} {f(r['sys_per_deliv'], '{:.3f}'):>7} {f(r['wsys_per_deliv'], '{:.3f}'):>7} {r['p50_us'] / 1e3:>8.1f} {r['p99_us'] / 1e3:>8.1f} {r['rd_cpu_pct']:>4.0f} {err(r):>3} {ratio:>11}")
        if (srv, mode) in stops:
            print(f"{'':<7} ramp ended: {stops[srv, mode]}")
        if rs:
            peak = max(rs, key=lambda r: r['deliv_per_s'])
            # half saturation: the step whose deliveries/s is closest to half the peak
            half = min(rs, key=lambda r: abs(r['deliv_per_s'] - peak['deliv_per_s'] / 2))
            summary[srv, mode] = (peak, half)
print()
print("== summary (peak = the step with the most deliveries/s; half = the step nearest half of it)")
print(f"{'mode':<8} {'server':<7} {'peak deliv/s':>12} {'ns/dlv@peak':>11} {'rd%@peak':>8} {'half deliv/s':>12} {'p99_ms@half':>11} {'peak vs node':>12} {'ns/dlv vs node':>14}")
for mode in ('batched', 'alone'):
    for srv in ('duplex', 'node'):
        if (srv, mode) not in summary:
            continue
        peak, half = summary[srv, mode]
        r1 = r2 = '-'
        if srv == 'duplex' and ('node', mode) in summary:
            npk = summary['node', mode][0]
            r1 = f"{peak['deliv_per_s'] / npk['deliv_per_s']:.2f}x"
            r2 = f"{peak['srv_ns_per_deliv'] / npk['srv_ns_per_deliv']:.2f}x"
        print(f"{mode:<8} {srv:<7} {peak['deliv_per_s']:>12.0f} {peak['srv_ns_per_deliv']:>11.0f} {peak['rd_cpu_pct']:>8.0f} {half['deliv_per_s']:>12.0f} {half['p99_us'] / 1e3:>11.1f} {r1:>12} {r2:>14}")
targets = []
if ('duplex', 'batched') in summary:
    v = summary['duplex', 'batched'][0]['srv_ns_per_deliv']
    targets.append(f"server CPU per delivery, batched, at peak: {v / 1e3:.2f} us (target <= 0.25 us: {'met' if v <= 250 else 'NOT met'})")
if ('duplex', 'alone') in summary:
    v = summary['duplex', 'alone'][0]['srv_ns_per_deliv']
    targets.append(f"server CPU per delivery, alone, at peak: {v / 1e3:.2f} us (target <= 1 us: {'met' if v <= 1000 else 'NOT met'})")
    lo = min((r for r in rows if r['server'] == 'duplex' and r['mode'] == 'alone'), key=lambda r: r['target_per_s'])
    targets.append(f"  (alone at the lowest rate, {lo['target_per_s']:.0f}/s, one write per delivery: {lo['srv_ns_per_deliv'] / 1e3:.2f} us)")
for mode in ('batched', 'alone'):
    if ('duplex', mode) in summary:
        v = summary['duplex', mode][1]['p99_us']
        targets.append(f"p99 at half saturation, {mode}: {v / 1e3:.1f} ms (target < 5 ms: {'met' if v < 5000 else 'NOT met'})")
print()
print("targets (duplex):")
for t in targets:
    print("  " + t)
api = [r for r in rows if r['mode'] == 'api']
if api:
    print()
    print("== /api/publish on one keep-alive connection, one request in flight (duplex)")
    print(f"{'subs':>6} {'publishes/s':>11} {'deliv/s':>9} {'srv%':>5} {'us/publish':>10} {'sys/pub':>7} {'sys/dlv':>7} {'p50_ms':>8} {'p99_ms':>8} {'rd%':>4} {'err':>3}")
    for r in api:
        print(f"{r['subs']:>6} {r['pub_per_s']:>11.0f} {r['deliv_per_s']:>9.0f} {r['srv_cpu_pct']:>5.0f} {r['srv_us_per_pub']:>10.1f} {f(r['sys_per_pub'], '{:.1f}'):>7} {f(r['sys_per_deliv'], '{:.3f}'):>7} {f(r['p50_us'] / 1e3 if r['subs'] else -1, '{:.1f}'):>8} {f(r['p99_us'] / 1e3 if r['subs'] else -1, '{:.1f}'):>8} {r['rd_cpu_pct']:>4.0f} {err(r):>3}{'  (perf attached)' if r['sys_per_pub'] >= 0 else ''}")
    print("us/publish = server CPU per publish (its deliveries included); p50/p99 = publish -> deliver; rd% = the readers,")
    print("which share the load generator's core with the publisher (one request in flight: the publisher waits for them)")
print()
print("rd% = CPU of gwload's reader processes (100 = the load generator's core is saturated)")
print("syscalls: $sys_source, over each step and its drain")
print("whole run: $elapsed s")
EOF

if ((errors > 0)); then
  log "$errors run(s) counted errors; logs:"
  tail -n 5 "$work"/*.log >&2 || true
  exit 1
fi
log "table written to $out"
