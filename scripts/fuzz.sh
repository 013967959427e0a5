#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan) in build-fuzz and runs each for SECONDS
# (default 30) from its seed corpus tests/fuzz/corpus/<target>/ (read only: new inputs go to
# build-fuzz/corpus/<target>/). Crashes are written to build-fuzz/findings/. Prints the number
# of executions per target; exits non-zero if a target found a crash, leak or timeout.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: record matrix_spec guest_image run_flags)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(record matrix_spec guest_image run_flags)
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang-14 \
  -DCMAKE_CXX_COMPILER=clang++-14 -DKVMSCALE_FUZZ=ON -DKVMSCALE_BUILD_TESTS=OFF \
  -DKVMSCALE_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
mkdir -p build-fuzz/findings
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  log="build-fuzz/fuzz_$t.log"
  if ASAN_OPTIONS=detect_leaks=1 "build-fuzz/tests/fuzz/fuzz_$t" -max_total_time="$secs" \
    -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/findings/$t-" "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" \
    >"$log" 2>&1; then
    result=ok
  else
    result="FOUND (see $log and build-fuzz/findings/)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz_$t: $runs executions in ${secs}s: $result"
done
exit $status
