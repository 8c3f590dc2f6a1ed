#!/usr/bin/env bash
# Cross-node fan-out benchmark (docs/benchmarks.md "Cross-node fan-out"):
# one redis-server, three `duplex serve --redis` nodes (one worker each),
# subscribers spread round robin over the three nodes, publishes through
# node 1, on loopback.
#
#   scripts/bench_cluster.sh BUILD_DIR
#
# BUILD_DIR holds the duplex binary (BUILD_DIR/duplex or $DUPLEX_BIN) and
# bench/gwload (bench/gwload.c, `--sub-ports` spreads its subscribers).
# Each row is one gwload run of one step (fresh counters, the same nodes):
#
#   fanout R   SUBS raw subscribers (ws://node/ws?subscribe=bench.c), a raw
#              publisher on node 1 at R msgs/s (16 frames per write):
#              deliveries/s, publish -> deliver p50/p99 over all nodes (gwload
#              stamps each message with CLOCK_MONOTONIC at send);
#   api        POST /api/publish on node 1, one request in flight (each
#              publish waits for Redis's reply before the next);
#   pipelined R  the raw publisher at R msgs/s (BENCH_CL_PIPE_RATES), 64
#              frames per write, so node 1 has many publishes in flight to
#              Redis at once; 3 subscribers (one per node);
#   1 node R, 1 node api  the baseline: the same loads on one more
#              `duplex serve` without --redis (the in-process bus), every
#              subscriber on it (BENCH_CL_SOLO_RATES).
#
# For each row, from the moment every subscriber is open to the end of the
# run (the step and its drain): Redis commands per publish (INFO
# commandstats, reset at the start: the EVALSHA a node sends and every
# command its script runs, divided by the publishes), and the CPU of each
# process (/proc/PID/stat utime+stime: redis-server, the
# three nodes, gwload's readers as gwload reports them): the busiest one is
# named as the bottleneck when it is near a full core.
#
# Environment: BENCH_CL_SUBS (default 3000), BENCH_CL_RATES (default
# 50,100,200,500,1000), BENCH_CL_PIPE_RATES (default 10000,20000,40000),
# BENCH_CL_SOLO_RATES (default 100,500), BENCH_CL_SECS
# (default 4), BENCH_PORT (first port, default 19700). No CPU pinning: the
# five processes share the machine's CPUs (the table prints how many).
# The table goes to stdout and BUILD_DIR/bench-cluster.txt, the raw lines to
# BUILD_DIR/bench-cluster.jsonl. Every process started here is stopped by
# PID on exit. Exit 1 if a run counted an error (order, a closed subscriber,
# a failed publish, deliveries missing).
set -euo pipefail

build=${1:?usage: bench_cluster.sh BUILD_DIR}
build=$(cd "$build" && pwd)
bin=$build/bench
out=$build/bench-cluster.txt
raw=$build/bench-cluster.jsonl

SUBS=${BENCH_CL_SUBS:-3000}
RATES=${BENCH_CL_RATES:-50,100,200,500,1000}
PIPE_RATES=${BENCH_CL_PIPE_RATES:-10000,20000,40000}
SOLO_RATES=${BENCH_CL_SOLO_RATES:-100,500}
SECS=${BENCH_CL_SECS:-4}
WARM=0.5
port=${BENCH_PORT:-19700}
HOST=127.0.0.1
KEY=bench-key

work=$(mktemp -d /tmp/bench-cluster.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench_cluster: $*" >&2; }

[[ -x $bin/gwload ]] || { log "$bin/gwload is missing: build BUILD_DIR first (make bench)"; exit 2; }
duplex_bin=${DUPLEX_BIN:-}
if [[ -z $duplex_bin ]]; then
  for c in "$build/duplex" "$build/cmd/duplex/duplex"; do
    [[ -x $c ]] && { duplex_bin=$c; break; }
  done
fi
[[ -n $duplex_bin ]] || { log "no duplex binary in $build (or \$DUPLEX_BIN)"; exit 2; }
command -v redis-server >/dev/null || { log "redis-server is missing (scripts/deps.sh bench)"; exit 2; }
command -v redis-cli >/dev/null || { log "redis-cli is missing (redis-tools, scripts/deps.sh bench)"; exit 2; }
command -v python3 >/dev/null || { log "python3 is needed to print the table"; exit 2; }
"$duplex_bin" serve --help | grep -q -- '--redis' || { log "$duplex_bin serve has no --redis"; exit 2; }

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
next_port() {
  while ! port_free "$port"; do port=$((port + 1)); done
  PORT_OUT=$port
  port=$((port + 1))
}
wait_listen() { # PID PORT NAME
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || { log "$3 exited at start: $(tail -3 "$work/$3.log")"; exit 2; }
    port_free "$2" || return 0
    sleep 0.1
  done
  log "$3 does not listen on $2 after 10 s"
  exit 2
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# ---- Redis and three nodes ---------------------------------------------------------------
next_port
RPORT=$PORT_OUT
mkdir -p "$work/redis"
redis-server --port "$RPORT" --bind "$HOST" --dir "$work/redis" --save "" --appendonly no --daemonize no \
  --protected-mode no >"$work/redis.log" 2>&1 &
RPID=$!
pids+=("$RPID")
wait_listen "$RPID" "$RPORT" redis
rcli() { redis-cli -h "$HOST" -p "$RPORT" "$@"; }

NPORTS=()
NPIDS=()
for i in 1 2 3; do
  next_port
  "$duplex_bin" serve --host "$HOST" --port "$PORT_OUT" --workers 1 --api-key "$KEY" --log-level warn \
    --http-max-requests 1000000000 --redis "redis://$HOST:$RPORT/0" >"$work/node$i.log" 2>&1 &
  NPIDS+=($!)
  pids+=($!)
  NPORTS+=("$PORT_OUT")
  wait_listen "$!" "$PORT_OUT" "node$i"
done
healthz() { # PORT: the status line of GET /healthz
  local line=""
  { exec 3<>"/dev/tcp/$HOST/$1"; } 2>/dev/null || return 0
  printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$HOST" >&3
  IFS= read -r -t 5 line <&3 || true
  exec 3>&-
  echo "$line"
}
for i in 0 1 2; do
  for _ in $(seq 100); do
    [[ $(healthz "${NPORTS[$i]}") == "HTTP/1."?" 200"* ]] && continue 2
    sleep 0.1
  done
  log "node$((i + 1)) /healthz is not 200 after 10 s: $(tail -3 "$work/node$((i + 1)).log")"
  exit 2
done
sub_ports=$(IFS=,; echo "${NPORTS[*]}")
# the baseline: one node without Redis (the in-process bus), same flags
next_port
SOLO_PORT=$PORT_OUT
"$duplex_bin" serve --host "$HOST" --port "$SOLO_PORT" --workers 1 --api-key "$KEY" --log-level warn \
  --http-max-requests 1000000000 >"$work/solo.log" 2>&1 &
SOLO_PID=$!
pids+=("$SOLO_PID")
wait_listen "$SOLO_PID" "$SOLO_PORT" solo

errors=0
: >"$raw"
# run NAME ARGS...: one gwload run (one step); a JSON line with the step and
# the CPU of each process and Redis's commands per publish goes to $raw.
run() { # NAME PUBLISH-PORT GWLOAD-ARGS...
  local name=$1 pport=$2 rc=0 c0=() c1=() p gw t0 t1
  shift 2
  : >"$work/gw.err"
  timeout 300 "$bin/gwload" --host "$HOST" --port "$pport" --label "$name" --step-secs "$SECS" \
    --warmup "$WARM" --topic bench.t "$@" >"$work/run.jsonl" 2>"$work/gw.err" &
  gw=$!
  # the window starts once every subscriber is open (gwload then waits
  # 0.3 s and publishes): subscribing costs Redis commands and CPU that are
  # not the publishes'
  for _ in $(seq 1200); do
    grep -q 'subscribers open' "$work/gw.err" && break
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.05
  done
  rcli CONFIG RESETSTAT >/dev/null
  for p in "$RPID" "${NPIDS[@]}" "$SOLO_PID"; do c0+=("$(ticks "$p")"); done
  t0=$(date +%s.%N)
  wait "$gw" || rc=$?
  t1=$(date +%s.%N)
  for p in "$RPID" "${NPIDS[@]}" "$SOLO_PID"; do c1+=("$(ticks "$p")"); done
  rcli INFO commandstats >"$work/cmdstats.txt"
  cat "$work/gw.err" >>"$work/gwload.log"
  if ((rc != 0)); then
    errors=$((errors + 1))
    log "$name: gwload exit $rc: $(tail -3 "$work/gw.err")"
  fi
  python3 - "$work/run.jsonl" "$work/cmdstats.txt" "$name" "$t0" "$t1" "$(getconf CLK_TCK)" \
    "${c0[*]}" "${c1[*]}" >>"$raw" <<'PY'
import json, sys
runf, statf, name, t0, t1, hz, c0, c1 = sys.argv[1:9]
steps = [json.loads(l) for l in open(runf) if l.startswith('{') and '"step"' in l]
if not steps:
    sys.exit(0)
s = steps[0]
calls = {}
for ln in open(statf):
    if ln.startswith('cmdstat_'):
        cmd, _, rest = ln[8:].strip().partition(':')
        calls[cmd] = int(dict(kv.split('=', 1) for kv in rest.split(','))['calls'])
calls = {k: v for k, v in calls.items() if not k.startswith(('config', 'info'))}  # the script's own
wall = float(t1) - float(t0)
cpu = [(int(b) - int(a)) / int(hz) / wall * 100 for a, b in zip(c0.split(), c1.split())]
# EVALSHA is what a node sends per publish; the rest runs inside the script
s.update(row=name, wall_s=round(wall, 2), redis_calls=calls,
         cmds_per_pub=round(sum(calls.values()) / s['published'], 2) if s['published'] else None,
         evalsha_per_pub=round(calls.get('evalsha', 0) / s['published'], 2) if s['published'] else None,
         cpu_redis=round(cpu[0]), cpu_nodes=[round(x) for x in cpu[1:4]], cpu_solo=round(cpu[4]))
print(json.dumps(s))
PY
}

started=$(date +%s)
started_utc=$(date -u '+%Y-%m-%d %H:%M UTC')
load=$(cut -d' ' -f1 /proc/loadavg)
IFS=, read -r -a rates <<<"$RATES"
for r in "${rates[@]}"; do
  log "fanout: $SUBS subscribers over 3 nodes, $r msgs/s through node 1"
  run "fanout $r" "${NPORTS[0]}" -c "$SUBS" --sub-ports "$sub_ports" --mode batched --batch 16 --rates "$r"
done
log "api: POST /api/publish on node 1, one in flight, no subscriber"
run "api" "${NPORTS[0]}" -c 0 --mode api --api-key "$KEY"
log "api: the same with $SUBS subscribers on nodes 2 and 3"
run "api+subs 2,3" "${NPORTS[0]}" -c "$SUBS" --sub-ports "${NPORTS[1]},${NPORTS[2]}" --mode api --api-key "$KEY"
IFS=, read -r -a prates <<<"$PIPE_RATES"
for r in "${prates[@]}"; do
  log "pipelined: $r msgs/s, 64 per write, 3 subscribers (one per node)"
  run "pipelined $r" "${NPORTS[0]}" -c 3 --sub-ports "$sub_ports" --mode batched --batch 64 --rates "$r"
done
IFS=, read -r -a srates <<<"$SOLO_RATES"
for r in "${srates[@]}"; do
  log "baseline: one node without Redis, $SUBS subscribers, $r msgs/s"
  run "1 node $r" "$SOLO_PORT" -c "$SUBS" --mode batched --batch 16 --rates "$r"
done
log "baseline: one node without Redis, /api/publish"
run "1 node api" "$SOLO_PORT" -c 0 --mode api --api-key "$KEY"
elapsed=$(($(date +%s) - started))

python3 - "$raw" "$SUBS" "$SECS" "$(nproc)" "$load" "$started_utc" "$elapsed" <<'EOF' | tee "$out"
import json, sys
raw, subs, secs, ncpu, load, when, elapsed = sys.argv[1:8]
rows = [json.loads(l) for l in open(raw) if l.startswith('{')]
print("Cross-node fan-out: 3 duplex nodes (1 worker each) + 1 redis-server on %s CPUs, loopback; %s; "
      "load before %s; %s s" % (ncpu, when, load, elapsed))
print("%-16s %5s %7s %9s %8s %8s %11s %6s %14s %4s  %s" % (
    "row", "subs", "pub/s", "deliv/s", "p50 us", "p99 us", "cmds/pub", "redis%", "nodes% 1,2,3", "rd%", "busiest"))
solo_rows = [r for r in rows if r["row"].startswith("1 node")]
rows = [r for r in rows if not r["row"].startswith("1 node")]
for r in rows:
    cpus = {"redis": r["cpu_redis"], "node1": r["cpu_nodes"][0], "node2": r["cpu_nodes"][1],
            "node3": r["cpu_nodes"][2], "gwload readers": r.get("rd_cpu_pct", 0)}
    busiest = max(cpus, key=cpus.get)
    lat50 = "-" if r["p50_us"] < 0 or not r["subs"] else "%.0f" % r["p50_us"]
    lat99 = "-" if r["p99_us"] < 0 or not r["subs"] else "%.0f" % r["p99_us"]
    print("%-16s %5d %7.0f %9.0f %8s %8s %11s %6d %14s %4d  %s %d%%%s" % (
        r["row"], r["subs"], r["pub_per_s"], r["deliv_per_s"], lat50, lat99,
        "-" if r["cmds_per_pub"] is None else "%s (%s)" % (r["cmds_per_pub"], r["evalsha_per_pub"]), r["cpu_redis"],
        ",".join(str(x) for x in r["cpu_nodes"]), r.get("rd_cpu_pct", 0), busiest, cpus[busiest],
        "  ERRORS order %d closed %d bad %d pub %d" % (r["order_err"], r["closed"], r["bad"], r["pub_errors"])
        if r["order_err"] or r["closed"] or r["bad"] or r["pub_errors"] else
        "  BEHIND: %d deliveries not in 3 s after the step" % r["missing"] if r["missing"] else ""))
print("baseline, one node without Redis:")
for r in solo_rows:
    lat50 = "-" if r["p50_us"] < 0 or not r["subs"] else "%.0f" % r["p50_us"]
    lat99 = "-" if r["p99_us"] < 0 or not r["subs"] else "%.0f" % r["p99_us"]
    print("%-16s %5d %7.0f %9.0f %8s %8s %11s %6s %14s %4d  node %d%%" % (
        r["row"], r["subs"], r["pub_per_s"], r["deliv_per_s"], lat50, lat99, "-", "-", "-",
        r.get("rd_cpu_pct", 0), r["cpu_solo"]))
print("cmds/pub: every Redis command per publish (in brackets the EVALSHA calls per publish);"
      " CPU % of one core over the window; rd%: gwload's readers")
print("Redis commands per row (calls):")
for r in rows:
    print("  %-16s %s" % (r["row"], ", ".join("%s %d" % kv for kv in sorted(r["redis_calls"].items()))))
EOF
((errors == 0)) || { log "$errors run(s) counted errors"; exit 1; }
