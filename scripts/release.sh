#!/usr/bin/env bash
# The release build: aicloud optimised with a profile of its own hot paths (profile-guided
# optimisation), for operators who deploy it. `make build` stays the plain build that `make up`
# and `make test` use; this one takes about twice as long (two builds and a training run).
#
#   scripts/release.sh [--build-dir DIR] [--jobs N]     (or: make release)
#
# 1. configure DIR (build-release) with -DAICLOUD_PGO=generate and build the server, instrumented;
# 2. train: the gateway benchmark (bench/gateway/run.sh: whole and streamed chat completions through
#    the gateway at a fixed rate and at saturation) and the API benchmark (bench/http/run.sh: the
#    control plane's GETs and POSTs) against the instrumented server, which writes its profile to
#    DIR/pgo-profile when it stops;
# 3. reconfigure DIR with -DAICLOUD_PGO=use and rebuild with that profile.
# The result is DIR/aicloud. What it buys (fewer instructions per proxied request, throughput):
# docs/PERFORMANCE.md §5. Training needs nginx and wrk (scripts/setup.sh installs both).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build-release
JOBS=$(nproc)

say() { echo "release: $*" >&2; }
die() { echo "release: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) [ -n "${2:-}" ] || die "--build-dir needs a directory"; BUILD=$(realpath -m "$2"); shift 2 ;;
    --jobs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number, not '${2:-}'"; JOBS=$2; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for tool in cmake ninja nginx wrk curl; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup.sh (or make setup) first"
done

PROFILE=$BUILD/pgo-profile
configure() {  # configure PGO_MODE
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAICLOUD_TESTS=OFF \
    -DAICLOUD_BENCH=ON -DAICLOUD_PGO="$1" -DAICLOUD_PGO_DIR="$PROFILE" >/dev/null
}
build() {  # build STEP: the server and the gateway benchmark's load generator, ninja's progress shown
  say "$1"
  cmake --build "$BUILD" -j "$JOBS" --target aicloud gateway_loadgen
}

start=$SECONDS
say "1/3: instrumented build in $BUILD"
configure generate
rm -rf "$PROFILE"
build "1/3: building (about as long as make build)"

say "2/3: training run: the gateway benchmark (about 1 minute)"
AICLOUD_BIN=$BUILD/aicloud LOADGEN=$BUILD/bench/gateway_loadgen SYNC=normal RUNS=1 DURATION=8 \
  WARMUP=1 MODES="rate saturate" CASES="whole stream" bash "$ROOT/bench/gateway/run.sh" >/dev/null
say "2/3: training run: the API benchmark (about 1 minute)"
AICLOUD_BIN=$BUILD/aicloud RUNS=1 DURATION=5 WARMUP=1 bash "$ROOT/bench/http/run.sh" >/dev/null
# The benchmarks stop their servers and wait for them; each wrote its counters on the way out.
n=$(find "$PROFILE" -name '*.gcda' 2>/dev/null | wc -l)
[ "$n" -gt 0 ] || die "the training run left no profile in $PROFILE"
say "2/3: profile of $n translation units in $PROFILE"

say "3/3: optimised build with the profile"
configure use
build "3/3: building (every file again: each object now depends on the profile)"
say "done in $(((SECONDS - start) / 60)) min: $BUILD/aicloud"
