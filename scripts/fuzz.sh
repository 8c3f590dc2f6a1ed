#!/usr/bin/env bash
# Runs every libFuzzer target built in BUILD_DIR for SECONDS each, starting
# from its seed corpus (tests/fuzz/corpus/<name>, read-only) plus a working
# corpus inside the build tree. Fails if any target finds a crash, a leak, a
# timeout or a broken invariant; prints executions per target.
#
#   scripts/fuzz.sh BUILD_DIR SECONDS
set -euo pipefail
build=${1:?usage: fuzz.sh BUILD_DIR SECONDS}
secs=${2:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
targets=("$build"/tests/fuzz/fuzz_*)
((${#targets[@]} > 0)) && [[ -x "${targets[0]}" ]] || { echo "fuzz: no targets in $build/tests/fuzz" >&2; exit 1; }

printf '%-22s %12s %10s %8s\n' target executions exec/s result
fail=0
for bin in "${targets[@]}"; do
  [[ -x "$bin" && -f "$bin" ]] || continue
  t=$(basename "$bin"); name=${t#fuzz_}
  seeds="$root/tests/fuzz/corpus/$name"
  [[ -d "$seeds" ]] || { echo "fuzz: $t has no seed corpus at $seeds" >&2; exit 1; }
  work="$build/fuzz-work/$name"; mkdir -p "$work"
  dict=(); [[ -f "$root/tests/fuzz/$name.dict" ]] && dict=(-dict="$root/tests/fuzz/$name.dict")
  log="$build/fuzz-work/$name.log"
  set +e
  ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/fuzz-work/$name-" "${dict[@]}" "$work" "$seeds" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if ((rc == 0)); then res=ok; else res="FAILED($rc)"; fail=1; fi
  printf '%-22s %12s %10s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "$res"
  if ((rc != 0)); then tail -n 60 "$log" >&2; fi
done
exit $fail
