#!/usr/bin/env bash
# Installs every Debian package duplex needs to build, test and benchmark,
# and only those that are missing. Uses sudo when not root. Idempotent and
# quick when everything is present (one dpkg-query).
#
#   scripts/deps.sh            everything (build, tests, benchmarks)
#
# Debian's python3-* packages are seen by /usr/bin/python3 only; the test
# scripts call that interpreter explicitly.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config
  libssl-dev zlib1g-dev libedit-dev
  # tests: unit tests, sanitizers and fuzzers (clang + its runtime libraries)
  libcmocka-dev clang libclang-rt-14-dev llvm openssl
  # tests: real peers (Node ws, Python websockets, headless Chromium), fault tests
  nodejs python3 python3-websockets chromium util-linux procps
  # benchmarks: peers of scripts/bench_echo.sh, CPU pinning, syscall counts
  libwebsockets-dev linux-perf strace gnuplot-nox
)
# Debian's nodejs comes without npm; a nodesource nodejs bundles it (and
# conflicts with Debian's npm package), so npm is added only when missing.
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages of the interop tests (ws, playwright-core; never a browser
# download), from the lock file when missing or older than it.
interop=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/interop
if [[ ! -f $interop/node_modules/.package-lock.json || $interop/package-lock.json -nt $interop/node_modules/.package-lock.json ]]; then
  echo "deps: npm ci in tests/interop" >&2
  (cd "$interop" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
