#!/usr/bin/env bash
# Interop tests: duplex serve against real peers.
#
#   tests/interop/run.sh [--duplex BIN] [--timeout SECONDS] [--keep] PEER...
#
#   PEER     node     Node.js `ws` client        (npm, tests/interop/node_modules)
#            python   Python `websockets` client (Debian python3-websockets, /usr/bin/python3)
#            browser  headless Chromium          (Debian chromium, driven by npm playwright-core)
#            demo     the chat demo (web/) in headless Chromium against duplex serve --demo
#                     (gateway_demo.mjs: chat, presence, ticker, resume, SSE, restart)
#            all      the four, one after the other
#   --duplex the duplex binary (default: $DUPLEX, else build/duplex)
#   --timeout seconds the peer's client may take (default 240)
#   --keep   keep the temp dir (certificates, server logs); it is kept on failure anyway
#
# Each peer run makes a test CA and server certificate, starts its own
# servers on free loopback ports, runs the client, stops the servers by PID
# and ends with "interop-PEER: N passed, M failed". Exit status 0 only if
# nothing failed. A missing peer is a failure, never a skip; install with
# scripts/deps.sh test (which also runs `npm ci` in tests/interop).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

if [[ ! -x /usr/bin/python3 ]]; then
  echo "interop: /usr/bin/python3 is missing (apt-get install python3)" >&2
  echo "interop: 0 passed, 1 failed"
  exit 1
fi

opts=()
peers=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --duplex|--timeout) (($# >= 2)) || { usage >&2; exit 2; }; opts+=("$1" "$2"); shift 2 ;;
    --keep) opts+=("$1"); shift ;;
    node|python|browser|demo) peers+=("$1"); shift ;;
    all) peers+=(node python browser demo); shift ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
((${#peers[@]})) || { usage >&2; exit 2; }
if [[ -z "${DUPLEX:-}" ]] && [[ " ${opts[*]-} " != *" --duplex "* ]]; then
  opts+=(--duplex "$here/../../build/duplex")
fi

status=0
for p in "${peers[@]}"; do
  if [[ $p == demo ]]; then
    # Starts (and restarts) its own server; ends with "gateway-demo: N passed, M failed".
    if ! command -v node >/dev/null; then
      echo "not ok - peer missing: node (apt-get install nodejs npm)"
      echo "gateway-demo: 0 passed, 1 failed"
      status=1
      continue
    fi
    node "$here/gateway_demo.mjs" "${opts[@]}" || status=1
  else
    /usr/bin/python3 "$here/harness.py" "${opts[@]}" "$p" || status=1
  fi
done
exit "$status"
