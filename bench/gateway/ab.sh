#!/usr/bin/env bash
# A/B of two aicloud builds at saturation: PAIRS rounds of bench/gateway/run.sh (saturation only),
# each round running both builds back to back and alternating which goes first, since this
# machine's speed drifts over minutes. Prints each run's gateway req/s and its ratio to nginx as a
# proxy in the same run, then the medians.
#
#   bench/gateway/ab.sh A_BIN B_BIN     (PAIRS=4 DURATION=5 CASES="whole stream" SYNC=normal)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
A=${1:?usage: ab.sh A_BIN B_BIN}
B=${2:?usage: ab.sh A_BIN B_BIN}
PAIRS=${PAIRS:-4}
export DURATION=${DURATION:-5} CASES=${CASES:-whole stream} SYNC=${SYNC:-normal} RUNS=1 MODES=saturate
LOADGEN=${LOADGEN:-$ROOT/build/bench/gateway_loadgen}
export LOADGEN
OUT=$(mktemp /tmp/aicloud-ab-XXXXXX)
trap 'rm -f "$OUT"' EXIT
one() {  # one() LABEL BIN: appends "LABEL kind gateway_rps ratio" lines
  local res
  res=$(AICLOUD_BIN=$2 "$ROOT/bench/gateway/run.sh" 2>&1) || { echo "$res" >&2; exit 1; }
  awk -v l="$1" '$1 == "saturate" && NF == 9 { r[$2 " " $3] = $4 }
    END { for (k in r) { split(k, a, " "); if (a[2] == "gateway") printf "%s %s %.0f %.3f\n", l, a[1], r[k], r[k] / r[a[1] " nginx"] } }' \
    <<<"$res" | tee -a "$OUT"
}
for p in $(seq "$PAIRS"); do
  if [ $((p % 2)) = 1 ]; then one A "$A"; one B "$B"; else one B "$B"; one A "$A"; fi
done
echo
echo "Medians over $PAIRS pairs (gateway req/s at saturation, and its ratio to nginx as a proxy):"
for kind in $CASES; do
  for l in A B; do
    rps=$(awk -v l=$l -v k=$kind '$1 == l && $2 == k { print $3 }' "$OUT" | median_stdin)
    ratio=$(awk -v l=$l -v k=$kind '$1 == l && $2 == k { print $4 }' "$OUT" | median_stdin)
    echo "$kind $l: $rps req/s, ${ratio}x nginx"
  done
done
