#!/usr/bin/env bash
# System calls and context switches per request at saturation, counted exactly on the kernel's
# syscall tracepoints (perf stat: no strace slowdown): the aicloud gateway, nginx serving the
# canned answer directly, and nginx as a reverse proxy in front of it, counted on the proxy's own
# workers (bench/gateway/run.sh; with NGINX_PROXY=shared one set of workers serves both roles, so
# the proxy's own counts are the proxy case less the direct case).
#
#   bench/gateway/syscalls.sh        (CASE=whole|stream DURATION=4 CONNS=32 SYNC=normal;
#                                     AICLOUD_BIN and LOADGEN as for run.sh)
#
# Needs perf (Debian: linux-perf) and read access to the tracepoints (root here).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CASE=${CASE:-whole}
SECONDS_RUN=${DURATION:-4}
CONNS=${CONNS:-32}
export SYNC=${SYNC:-normal}
LOADGEN=${LOADGEN:-$(dirname "${AICLOUD_BIN:-$ROOT/build/aicloud}")/bench/gateway_loadgen}
command -v perf >/dev/null || { echo "syscalls: perf not found (Debian package linux-perf)" >&2; exit 1; }

# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
LOG=$(mktemp /tmp/aicloud-syscalls-XXXXXX)
HOLDER=""
trap 'if [ -n "$HOLDER" ]; then kill -- -"$HOLDER" 2>/dev/null || true; fi; rm -f "$LOG" "$LOG".*' EXIT
hold_gateway_bench "$CASE" "$LOG"
SERVER_PID=$HELD_SERVER_PID KEY=$HELD_KEY GW_URL=$HELD_URL/v1/chat/completions BODY=$HELD_DIR/$CASE.json
if [ "$CASE" = stream ]; then
  DIRECT=$P_STREAM PROXY=$P_PROXY_STREAM
else
  DIRECT=$P_WHOLE PROXY=$P_PROXY
fi
WORKERS=$(pgrep -d, -P "$NGINX_PID")
PROXY_WORKERS=$(pgrep -d, -P "$PROXY_PID")
SHARED=$([ "$NGINX_PID" = "$PROXY_PID" ] && echo 1 || echo 0)

EVENTS=context-switches
for s in sendmsg sendto writev recvmsg recvfrom recvmmsg epoll_wait epoll_ctl pwrite64 timerfd_settime futex getsockopt; do
  EVENTS+=",syscalls:sys_enter_$s"
done
# count PIDS URL [KEY]: prints "event per_request" lines.
count() {
  perf stat -x, -e "$EVENTS" -p "$1" -o "$LOG.perf" -- \
    "$LOADGEN" --url "$2" --body-file "$BODY" ${3:+--key "$3"} --connections "$CONNS" --seconds "$SECONDS_RUN" \
    --warmup 0 >"$LOG.lg" 2>&1
  local n
  n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$LOG.lg")
  awk -F, -v n="$n" '/sys_enter|switch/ { e = $3; sub("syscalls:sys_enter_", "", e); printf "%s %.2f\n", e, $1 / n }' "$LOG.perf"
  echo "requests/s $(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' "$LOG.lg")"
}
count "$SERVER_PID" "$GW_URL" "$KEY" >"$LOG.gw"
count "$WORKERS" "http://127.0.0.1:$DIRECT/v1/chat/completions" >"$LOG.direct"
count "$PROXY_WORKERS" "http://127.0.0.1:$PROXY/v1/chat/completions" >"$LOG.proxy"

echo "Per request at saturation ($CASE, $CONNS connections, ${SECONDS_RUN}s each):"
printf '%-18s %10s %14s %18s\n' "" gateway "nginx direct" "nginx proxy"
join <(sort "$LOG.gw") <(sort "$LOG.direct") | join - <(sort "$LOG.proxy") |
  awk -v shared="$SHARED" '{ p = $1 == "requests/s" || !shared ? $4 : $4 - $3; printf "%-18s %10s %14s %18s\n", $1, $2, $3, (p < 0 ? 0 : p) }'
