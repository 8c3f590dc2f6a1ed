#!/bin/sh
# scripts/idle_client_rss.sh SERVE_BIN BENCH_BIN PORT N: the RSS of one `duplex bench --idle` process
# holding N idle /echo connections (docs/benchmarks.md "Idle client memory"); run it for
# two N and divide the RSS difference by the connections added. Everything started is
# stopped by PID.
set -e
SRV=$1; BEN=$2; PORT=$3; N=$4
D=$(mktemp -d)
$SRV serve --host 127.0.0.1 --port $PORT --workers 1 --log-level warn --conns-per-ip off --handshakes-per-ip off --msg-rate off --ping-interval off >$D/srv.out 2>$D/srv.err &
SP=$!
i=0; while ! grep -q . $D/srv.out 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done
$BEN bench --idle -c $N --sources 4@127.0.1.1 --procs 1 --duration 30s --ready-file $D/ready ws://127.0.0.1:$PORT/echo >$D/bench.out 2>&1 &
BP=$!
i=0; while [ ! -e $D/ready ]; do i=$((i+1)); if [ $i -gt 1200 ]; then echo "not ready"; break; fi; sleep 0.1; done
sleep 1
tot=0
for p in $BP $(pgrep -P $BP || true); do r=$(awk '/VmRSS/{print $2}' /proc/$p/status); tot=$((tot+r)); done
echo "conns $N bench_rss_kB $tot"
kill $BP 2>/dev/null || true; wait $BP 2>/dev/null || true
kill $SP; wait $SP 2>/dev/null || true
rm -rf $D
