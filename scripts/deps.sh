#!/usr/bin/env bash
# Installs the Debian packages one use of duplex needs, and only those that
# are missing. Uses sudo when not root. Idempotent and quick when everything
# is present (one dpkg-query per package).
#
#   scripts/deps.sh [run]   build and run: compiler, cmake, pkg-config, OpenSSL,
#                           zlib, libedit, jansson, libyaml, hiredis (make, make run, make install)
#   scripts/deps.sh test    run + what the tests need: cmocka, clang and the
#                           sanitizer/fuzzer runtime of the installed clang,
#                           Python websockets, redis-server, Node.js + npm (and `npm ci` of
#                           the interop peers), Chromium, openssl, prlimit, and for
#                           tests/cluster nginx, haproxy, iproute2, PyJWT (make test)
#   scripts/deps.sh bench   run + the benchmark peers and tools: libwebsockets,
#                           Node.js + npm, perf, strace, gnuplot, valgrind, redis-server (make bench)
#
# Debian's python3-* packages are seen by /usr/bin/python3 only; the test
# scripts call that interpreter explicitly. Node: Debian 12's nodejs (18) is
# enough; tests/interop/package.json pins peers that support it.
set -euo pipefail

profile=${1:-run}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

run_pkgs=(build-essential cmake pkg-config libssl-dev zlib1g-dev libedit-dev libjansson-dev libyaml-dev libhiredis-dev)
test_pkgs=(
  # unit tests, sanitizers and fuzzers (the runtime package is added below,
  # for the clang actually installed)
  libcmocka-dev clang llvm
  # real peers (Node ws, Python websockets, headless Chromium), certificates, fault tests
  nodejs python3 python3-websockets chromium openssl util-linux procps
  # JWT tokens and keys minted at test time (tests/gateway/test_auth.py)
  python3-jwt python3-cryptography
  # the Redis bus's cluster tests (tests/gateway/test_redis*.py) start their own redis-servers;
  # test_redis_cluster.py joins three into a Redis Cluster with redis-cli
  redis-server redis-tools
  # multi-node deployment tests (tests/cluster): the load balancers in front
  # of the nodes, network namespaces and veth links, JWTs for user topics
  nginx haproxy iproute2
)
bench_pkgs=(
  # peers of scripts/bench_echo.sh (libwebsockets, Node ws), syscall counts,
  # charts, allocation counts
  libwebsockets-dev nodejs linux-perf strace gnuplot-nox valgrind
  # the cross-node fan-out (scripts/bench_cluster.sh): Redis and redis-cli
  redis-server redis-tools
)

case $profile in
  run) packages=("${run_pkgs[@]}") ;;
  test) packages=("${run_pkgs[@]}" "${test_pkgs[@]}") ;;
  bench) packages=("${run_pkgs[@]}" "${bench_pkgs[@]}") ;;
  *) echo "usage: scripts/deps.sh [run|test|bench]" >&2; exit 2 ;;
esac

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]; }

sudo=()
updated=0
apt_install() {
  local missing=()
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  echo "deps ($profile): installing ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 && ${#sudo[@]} -eq 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ((!updated)); then
    "${sudo[@]}" apt-get update -qq
    updated=1
  fi
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Debian's nodejs comes without npm; a nodesource nodejs bundles it (and
# conflicts with Debian's npm package), so npm is added only when missing.
if [[ $profile != run ]] && ! command -v npm >/dev/null 2>&1; then
  packages+=(npm)
fi
apt_install "${packages[@]}"

# True when clang finds its ASan runtime (older layout: lib/linux/
# libclang_rt.asan-ARCH.a; newer: a per-target runtime dir with libclang_rt.asan.a).
has_sanitizer_runtime() {
  local rt
  rt=$(clang -print-runtime-dir 2>/dev/null) || return 1
  [[ -f $rt/libclang_rt.asan-$(uname -m).a || -f $rt/libclang_rt.asan.a ]]
}

if [[ $profile == test ]]; then
  # The sanitizer and libFuzzer runtime of the clang on PATH (whatever its
  # version): nothing to do when clang already finds its ASan library, else
  # the first runtime package apt knows for that major version
  # (libclang-rt-N-dev since LLVM 14's split, libclang-common-N-dev before).
  major=$(clang --version | sed -n 's/.*clang version \([0-9][0-9]*\).*/\1/p' | head -1)
  [[ -n $major ]] || { echo "deps: cannot read the version of clang: $(clang --version | head -1)" >&2; exit 1; }
  if ! has_sanitizer_runtime; then
    runtime=""
    for cand in "libclang-rt-$major-dev" "libclang-common-$major-dev"; do
      if installed "$cand" || apt-cache show "$cand" >/dev/null 2>&1; then runtime=$cand; break; fi
    done
    [[ -n $runtime ]] || { echo "deps: no sanitizer runtime package found for clang $major" >&2; exit 1; }
    apt_install "$runtime"
  fi

  # npm packages of the interop tests (ws, playwright-core; never a browser
  # download), from the lock file when missing or older than it.
  interop=$root/tests/interop
  if [[ ! -f $interop/node_modules/.package-lock.json || $interop/package-lock.json -nt $interop/node_modules/.package-lock.json ]]; then
    echo "deps: npm ci in tests/interop" >&2
    (cd "$interop" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
