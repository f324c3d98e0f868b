#!/usr/bin/env bash
# A/B of server builds on one held cloud: bench/gateway/run.sh is set up once (HOLD=1), and each
# round restarts the server on the same data with each build in turn (the order alternating),
# warms it for a second and loads it at saturation. Rounds seconds apart, on the same nginx
# processes and load generator, move less between builds than ab.sh's runs a minute apart; the
# comparison is of the builds with each other, not with nginx as a proxy.
#
#   bench/gateway/ab_held.sh A B [C...]    (ROUNDS=8 SECS=5 CASE=stream|whole CONNS=32 SYNC=normal;
#                                           AICLOUD_BIN sets up the cloud, build/aicloud by default)
#
# Each argument is a server binary, or a command line that ends in one ("chrt -b 0 build/aicloud",
# "env MALLOC_CONF=thp:always build/aicloud"). Per round and build it prints req/s; the CPU per
# request of the server, the canned upstream and the load generator (/proc ticks; the load
# generator's task clock); and, when perf is there (Debian: linux-perf), each one's context
# switches and epoll_wait calls per request. Then the medians per build and each build's req/s
# over the first's within the rounds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
[ $# -ge 2 ] || die "usage: ab_held.sh A B [C...] (server binaries, or command lines that end in one)"
ROUNDS=${ROUNDS:-8} SECS=${SECS:-5} CASE=${CASE:-stream} CONNS=${CONNS:-32}
case $CASE in whole | stream) ;; *) die "CASE is whole or stream, not '$CASE'" ;; esac
export SYNC=${SYNC:-normal}
LOADGEN=${LOADGEN:-$ROOT/build/bench/gateway_loadgen}
export LOADGEN
[ -x "$LOADGEN" ] || die "$LOADGEN not found: build it first (make build)"
for v in "$@"; do
  read -ra words <<<"$v"
  [ ${#words[@]} -gt 0 ] || die "an empty build: give a server binary, or a command line that ends in one"
  [ -x "${words[-1]}" ] || die "'${words[-1]}' is not an aicloud binary (build it: make build)"
done
PERF=$(command -v perf || true)

WORK=$(mktemp -d /tmp/aicloud-abheld-XXXXXX)
HOLDER="" CUR=""
cleanup() {
  if [ -n "$CUR" ]; then kill "$CUR" 2>/dev/null || true; fi
  if [ -n "$HOLDER" ]; then kill -- -"$HOLDER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
hold_gateway_bench "$CASE" "$WORK/hold.log"
# The held server's command line, less its binary and port; each build runs it in turn.
ARGS=$(tr '\0' ' ' <"/proc/$HELD_SERVER_PID/cmdline" | sed 's/^[^ ]* //')
CUR=$HELD_SERVER_PID
UPSTREAM=$(pgrep -d, -P "$NGINX_PID")  # the canned nginx's workers, for perf
BODY=$HELD_DIR/$CASE.json

# start BUILD: the server on the held data, on a new port; sets CUR and GW.
start() {
  kill "$CUR" 2>/dev/null || true
  while kill -0 "$CUR" 2>/dev/null; do sleep 0.1; done
  local port code
  port=$(free_port)
  # shellcheck disable=SC2086,SC2046  # the build's words, then the server's own command line
  $1 $(sed "s/127.0.0.1:[0-9]*/127.0.0.1:$port/" <<<"$ARGS") >"$WORK/server.log" 2>&1 &
  CUR=$!
  GW=http://127.0.0.1:$port/v1/chat/completions
  for _ in $(seq 150); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $HELD_KEY" -H 'Content-Type: application/json' \
      --data-binary @"$BODY" "$GW" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "$CUR" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 5 "$WORK/server.log" >&2
  die "'$1' did not serve on the held data (HTTP $code)"
}

# per_request FILE EVENT N: a perf stat count per request ("-" without perf).
per_request() { [ -s "$1" ] && awk -F, -v e="$2" -v n="$3" '$3 ~ e { printf "%.3f", $1 / n }' "$1" || echo -; }

# measure ROUND I: one loaded period of build I; appends its line to $WORK/rounds.
measure() {
  local r=$1 i=$2 s0 u0 s1 u1 n p1="" p2="" lg=()
  "$LOADGEN" --url "$GW" --body-file "$BODY" --key "$HELD_KEY" --connections "$CONNS" --seconds 1 --warmup 0 >/dev/null
  rm -f "$WORK"/perf.*
  s0=$(cpu_ticks "$CUR") u0=$(cpu_ticks "$NGINX_PID")
  if [ -n "$PERF" ]; then
    local ev=context-switches,syscalls:sys_enter_epoll_wait
    "$PERF" stat -x, -e "$ev" -p "$CUR" -o "$WORK/perf.gw" -- sleep "$SECS.3" & p1=$!
    "$PERF" stat -x, -e "$ev" -p "$UPSTREAM" -o "$WORK/perf.up" -- sleep "$SECS.3" & p2=$!
    # shellcheck disable=SC2054  # -x, is perf's field separator
    lg=("$PERF" stat -x, -e "$ev,task-clock" -o "$WORK/perf.lg" --)
  fi
  "${lg[@]}" "$LOADGEN" --url "$GW" --body-file "$BODY" --key "$HELD_KEY" --connections "$CONNS" --seconds "$SECS" \
    --warmup 0 >"$WORK/lg.out" 2>&1
  [ -n "$p1" ] && wait "$p1" "$p2"
  s1=$(cpu_ticks "$CUR") u1=$(cpu_ticks "$NGINX_PID")
  n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$WORK/lg.out")
  [ "${n:-0}" -gt 0 ] || die "no requests answered: $(cat "$WORK/lg.out")"
  local lgcpu=-
  [ -s "$WORK/perf.lg" ] && lgcpu=$(awk -F, -v n="$n" '$3 ~ /task-clock/ { printf "%.1f", $1 * 1000 / n }' "$WORK/perf.lg")
  {
    awk -v r="$r" -v i="$i" -v n="$n" -v secs="$SECS" -v hz="$(getconf CLK_TCK)" -v s="$((s1 - s0))" -v u="$((u1 - u0))" \
      'BEGIN { printf "%d %d %.0f %.1f %.1f", r, i, n / secs, s * 1e6 / hz / n, u * 1e6 / hz / n }'
    printf ' %s %s %s %s %s %s %s\n' "$lgcpu" \
      "$(per_request "$WORK/perf.gw" switch "$n")" "$(per_request "$WORK/perf.up" switch "$n")" \
      "$(per_request "$WORK/perf.lg" switch "$n")" "$(per_request "$WORK/perf.gw" epoll "$n")" \
      "$(per_request "$WORK/perf.up" epoll "$n")" "$(per_request "$WORK/perf.lg" epoll "$n")"
  } | tee -a "$WORK/rounds"
}

B=("$@")
echo "round build req/s | CPU us/request: server upstream loadgen | context switches/request: server upstream loadgen | epoll_wait/request: server upstream loadgen"
for r in $(seq "$ROUNDS"); do
  order=$(seq 0 $((${#B[@]} - 1)))
  [ $((r % 2)) = 0 ] && order=$(seq $((${#B[@]} - 1)) -1 0)
  for i in $order; do
    start "${B[$i]}"
    measure "$r" "$i"
  done
done

echo
echo "Medians over $ROUNDS rounds ($CASE, $CONNS connections, ${SECS}s each):"
for i in "${!B[@]}"; do
  line="build $i (${B[$i]}):"
  for col in 3 4 5 6 7 8 9 10 11 12; do
    line+=" $(awk -v b="$i" -v c="$col" '$2 == b && $c != "-" { print $c }' "$WORK/rounds" | median_stdin)"
  done
  echo "$line"
  if [ "$i" -gt 0 ]; then
    ratios=$(awk -v b="$i" '$2 == 0 { a[$1] = $3 } $2 == b { x[$1] = $3 } END { for (k in x) if (a[k] > 0) printf "%.3f\n", x[k] / a[k] }' "$WORK/rounds")
    echo "  req/s over build 0's in the same round: median $(median_stdin <<<"$ratios")x ($(sort -g <<<"$ratios" | paste -sd' '))"
  fi
done
