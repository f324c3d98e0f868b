#!/usr/bin/env bash
# A/B of two aicloud builds: PAIRS rounds of bench/gateway/run.sh, each round running both builds
# back to back and alternating which goes first, since this machine's speed drifts over minutes.
#   MODE=saturate (default): each run's gateway req/s at saturation and its ratio to nginx as a
#                            proxy in the same run;
#   MODE=rate:               each run's added p50 and p99 at the fixed rate (the gateway's
#                            percentile less direct's in the same run).
# Then the medians per build.
#
#   bench/gateway/ab.sh A_BIN B_BIN     (PAIRS=4 DURATION=5 CASES="whole stream" SYNC=normal MODE)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
A=${1:?usage: ab.sh A_BIN B_BIN}
B=${2:?usage: ab.sh A_BIN B_BIN}
PAIRS=${PAIRS:-4}
MODE=${MODE:-saturate}
case $MODE in saturate | rate) ;; *) die "MODE is saturate or rate" ;; esac
export DURATION=${DURATION:-5} CASES=${CASES:-whole stream} SYNC=${SYNC:-normal} RUNS=1 MODES=$MODE
LOADGEN=${LOADGEN:-$ROOT/build/bench/gateway_loadgen}
export LOADGEN
OUT=$(mktemp /tmp/aicloud-ab-XXXXXX)
trap 'rm -f "$OUT"' EXIT
# one LABEL BIN: appends "LABEL kind X Y" lines (saturate: req/s, ratio to nginx; rate: added
# p50, added p99 in µs).
one() {
  local res
  res=$(AICLOUD_BIN=$2 "$ROOT/bench/gateway/run.sh" 2>&1) || { echo "$res" >&2; exit 1; }
  awk -v l="$1" -v mode="$MODE" '$1 == mode && NF == 9 { rps[$2 " " $3] = $4; p50[$2 " " $3] = $5; p99[$2 " " $3] = $6 }
    END { for (k in rps) { split(k, a, " "); if (a[2] != "gateway") continue
      d = a[1] " direct"; n = a[1] " nginx"
      if (mode == "saturate") printf "%s %s %.0f %.3f\n", l, a[1], rps[k], rps[k] / rps[n]
      else printf "%s %s %+.0f %+.0f\n", l, a[1], p50[k] - p50[d], p99[k] - p99[d] } }' <<<"$res" | tee -a "$OUT"
}
for p in $(seq "$PAIRS"); do
  if [ $((p % 2)) = 1 ]; then one A "$A"; one B "$B"; else one B "$B"; one A "$A"; fi
done
echo
if [ "$MODE" = saturate ]; then
  echo "Medians over $PAIRS pairs (gateway req/s at saturation, and its ratio to nginx as a proxy):"
else
  echo "Medians over $PAIRS pairs (the gateway's added p50 and p99 at the fixed rate, µs):"
fi
for kind in $CASES; do
  for l in A B; do
    x=$(awk -v l=$l -v k=$kind '$1 == l && $2 == k { print $3 }' "$OUT" | median_stdin)
    y=$(awk -v l=$l -v k=$kind '$1 == l && $2 == k { print $4 }' "$OUT" | median_stdin)
    if [ "$MODE" = saturate ]; then echo "$kind $l: $x req/s, ${y}x nginx"; else echo "$kind $l: added p50 $x us, p99 $y us"; fi
  done
done
