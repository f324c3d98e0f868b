#!/usr/bin/env bash
# Runs a fuzzer for a bounded time on its seed corpus.
#
#   fuzz/run.sh FUZZER SECONDS WORKDIR [libFuzzer flags...]   (FUZZ_CORPUS: the seeds, fuzz/corpus
#                                                              by default: the request fuzzer's)
#
# New interesting inputs go to WORKDIR/corpus (the seeds are only read); a crash,
# leak or timeout leaves its input in WORKDIR/artifacts/ and fails. Reproduce one with
#   FUZZER WORKDIR/artifacts/crash-...
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 FUZZER SECONDS WORKDIR [flags...]" >&2; exit 2; }
FUZZER=$1 SECONDS_=$2 WORK=$3
shift 3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SEEDS=${FUZZ_CORPUS:-$HERE/corpus}
[ -x "$FUZZER" ] || { echo "fuzz: $FUZZER not built" >&2; exit 1; }
mkdir -p "$WORK/corpus" "$WORK/artifacts"
echo "fuzz: $FUZZER for ${SECONDS_} s, corpus $WORK/corpus + $SEEDS"
# max_len: a little over the server's 16 KiB header limit, so that 431 is reachable.
exec "$FUZZER" -max_total_time="$SECONDS_" -timeout=10 -rss_limit_mb=2048 -max_len=17000 \
  -dict="$HERE/http.dict" -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 "$@" \
  "$WORK/corpus" "$SEEDS"
