#!/usr/bin/env bash
# User-space instructions per proxied request in the gateway, counted by callgrind: a figure that
# does not move with this shared VM's speed (time per request moves by ±30% between minutes here,
# the instruction count by well under 1%), so that two builds compare in one run each.
#
#   bench/gateway/instructions.sh [BIN...]     (CASES="whole stream" SECONDS_RUN=8; BIN defaults to
#                                               build/aicloud; KEEP=DIR keeps each loaded period's
#                                               callgrind dump there, for callgrind_annotate)
#
# For each build and case: run.sh sets up the cloud (HOLD=1), the server is restarted under
# callgrind on the same data, a warm-up, then an idle period and a loaded one of the same length
# (4 connections, closed loop), each dumped; instructions per request = (loaded - idle) / requests.
# The idle period takes out the background threads' own work. Needs valgrind (Debian: valgrind).
# Kernel time (system calls, the loopback) is not counted: bench/gateway/syscalls.sh is for that.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
command -v valgrind >/dev/null || die "valgrind not found (Debian package valgrind)"
CASES=${CASES:-whole stream}
SECONDS_RUN=${SECONDS_RUN:-8}
LOADGEN=${LOADGEN:-$ROOT/build/bench/gateway_loadgen}
[ $# -gt 0 ] || set -- "$ROOT/build/aicloud"
for c in $CASES; do
  case $c in whole | stream) ;; *) die "CASES holds whole and/or stream, not '$c'" ;; esac
done
for b in "$@"; do [ -x "$b" ] || die "$b is not an aicloud binary (build it: make build)"; done
[ -x "$LOADGEN" ] || die "$LOADGEN not found: build it first (make build)"

WORK=$(mktemp -d /tmp/aicloud-instr-XXXXXX)
HOLDER="" VG=""
cleanup() {
  [ -n "$VG" ] && kill "$VG" 2>/dev/null || true
  [ -n "$HOLDER" ] && kill -- -"$HOLDER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# measure BIN CASE: prints "BIN CASE requests Ir/request"
measure() {
  local bin=$1 case=$2 pid dir key args port url code out n idle busy
  AICLOUD_BIN=$bin SYNC=normal
  export AICLOUD_BIN SYNC LOADGEN
  hold_gateway_bench "$case" "$WORK/hold.log"
  pid=$HELD_SERVER_PID dir=$HELD_DIR key=$HELD_KEY
  # The same server, on the same data, under callgrind.
  port=$(free_port)
  args=$(tr '\0' ' ' <"/proc/$pid/cmdline" | sed "s/^[^ ]* //; s/127.0.0.1:0/127.0.0.1:$port/")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  # shellcheck disable=SC2086  # args: the server's own command line, split as it was
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$bin" $args >"$WORK/vg.log" 2>&1 &
  VG=$!
  url=http://127.0.0.1:$port/v1/chat/completions
  for _ in $(seq 240); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
      --data-binary @"$dir/$case.json" "$url" || true)
    [ "$code" = 200 ] && break
    sleep 1
  done
  [ "$code" = 200 ] || { tail -n 5 "$WORK/vg.log" >&2; die "the gateway under callgrind did not answer (HTTP $code)"; }
  "$LOADGEN" --url "$url" --key "$key" --body-file "$dir/$case.json" --connections 4 --seconds 2 --warmup 0 >/dev/null
  total() { grep -h '^totals:' "$WORK"/cg.out.* 2>/dev/null | awk '{ s += $2 } END { print s + 0 }'; }
  dump() { callgrind_control -d "$VG" >/dev/null 2>&1; sleep 2; }
  dump; rm -f "$WORK"/cg.out.*                 # counting from here
  sleep "$SECONDS_RUN"; dump; idle=$(total); rm -f "$WORK"/cg.out.*
  out=$("$LOADGEN" --url "$url" --key "$key" --body-file "$dir/$case.json" --connections 4 --seconds "$SECONDS_RUN" --warmup 0)
  dump; busy=$(total)
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cat "$WORK"/cg.out.* >"$KEEP/$(basename "$bin")-$case.callgrind"
  fi
  rm -f "$WORK"/cg.out.*
  n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")
  [ "${n:-0}" -gt 0 ] || die "no requests answered: $out"
  printf '%-40s %-6s %7d requests  %8d instructions/request\n' "$bin" "$case" "$n" $(((busy - idle) / n))
  kill "$VG"; wait "$VG" 2>/dev/null || true; VG=""
  kill -- -"$HOLDER" 2>/dev/null || true; wait "$HOLDER" 2>/dev/null || true; HOLDER=""
}

for case in $CASES; do
  for bin in "$@"; do measure "$bin" "$case"; done
done
