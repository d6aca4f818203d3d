#!/bin/bash
# The sanitizer runs of ./tools/test (ctest label `sanitize`, tests/CMakeLists.txt):
#   sanitize.sh build              configure and build build-fuzz/ (clang, ASan+UBSan with
#                                  libFuzzer's coverage in every object): the unit tests, the
#                                  VMM and the libFuzzer targets of tests/fuzz, in one folder
#   sanitize.sh unit               the unit tests (ctest -L unit) in build-fuzz/
#   sanitize.sh fuzz NAME [SECS]   fuzz_NAME for SECS seconds (default $LMIG_FUZZ_SECONDS, 20)
#                                  from tests/fuzz/corpus/NAME and a fresh fuzz_corpus set
# Any sanitizer report (halt_on_error), leak (LeakSanitizer) or fuzzer crash is a failure.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tools/lib/setup.sh"  # lmig_cmake
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:strict_init_order=1:check_initialization_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
JOBS=${LMIG_SANITIZE_JOBS:-2}

build() {  # DIR TARGETS... -- CMAKE ARGS...
  local dir=$1 targets=()
  shift
  while [[ $1 != -- ]]; do targets+=("$1"); shift; done
  shift
  lmig_cmake "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  local rc=0
  ninja -C "$dir" -j"$JOBS" "${targets[@]}" >"$dir/ninja.log" 2>&1 || rc=$?
  grep -vE '^\[[0-9]+/[0-9]+\]|^ninja: Entering' "$dir/ninja.log" >&2 || true
  return "$rc"
}

case ${1:-} in
  build)
    start=$(date +%s)
    # One build for both: the fuzz targets' coverage instrumentation costs the unit tests
    # little, and a second (gcc) sanitizer build cost CI some 4 minutes.
    build "$ROOT/build-fuzz" unit_tests lmig-rdma fuzzers -- -DLMIG_FUZZ=ON \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
    echo "sanitize: build-fuzz/ built in $(( $(date +%s) - start ))s"
    ;;
  unit)
    cd "$ROOT/build-fuzz"
    # lab_watchdog_rule is Python only: nothing for a sanitizer to see.
    ctest --output-on-failure --no-tests=error -L unit -E '^lab_watchdog_rule$' -j"$JOBS"
    ;;
  fuzz)
    name=${2:?usage: sanitize.sh fuzz NAME [SECONDS]}
    secs=${3:-${LMIG_FUZZ_SECONDS:-20}}
    fuzz=$ROOT/build-fuzz
    seeds=$ROOT/tests/fuzz/corpus/$name
    [[ -d $seeds ]] || { echo "sanitize: no seed corpus $seeds" >&2; exit 1; }
    # New inputs go to the first corpus folder: a fresh one in build-fuzz/, never tests/.
    # (fuzz_corpus writes every target's seeds: into a folder of this run's own, since the
    # targets run in parallel.)
    fresh=$(mktemp -d "$fuzz/corpus-$name.XXXXXX")
    "$fuzz/fuzz_corpus" "$fresh"
    rm -rf "$fuzz/corpus/$name"
    mkdir -p "$fuzz/corpus"
    mv "$fresh/$name" "$fuzz/corpus/$name"
    rm -rf "$fresh"
    mkdir -p "$fuzz/artifacts"
    log=$fuzz/fuzz_$name.log
    status=0
    "$fuzz/fuzz_$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -error_exitcode=77 -timeout_exitcode=78 -detect_leaks=1 -use_value_profile=1 \
      -print_final_stats=1 -artifact_prefix="$fuzz/artifacts/$name-" \
      "$fuzz/corpus/$name" "$seeds" >"$log" 2>&1 || status=$?
    if ((status)); then
      tail -60 "$log" >&2
      echo "sanitize: fuzz_$name FAILED (exit $status); input saved as $fuzz/artifacts/$name-*," \
        "rerun with: $fuzz/fuzz_$name <that file>" >&2
      exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
    echo "sanitize: fuzz_$name: ${runs:-?} inputs in ${secs}s, ${cov:-cov: ?}, no crash or leak"
    ((${runs:-0} > 0)) || { echo "sanitize: fuzz_$name ran no input" >&2; exit 1; }
    ;;
  *)
    echo "usage: sanitize.sh build | unit | fuzz NAME [SECONDS]" >&2
    exit 2
    ;;
esac
