#!/usr/bin/env bash
# HTTP benchmark of the control plane, with nginx on the same machine as the yardstick.
#
#   bench/http/run.sh            (or: make bench)
#
# Builds nothing: it runs build/aicloud (AICLOUD_BIN overrides). It starts a server with a fresh
# data dir, creates an organization and an admin key through the API with the operator key,
# starts nginx on a free loopback port with a temporary config serving the same bytes as the
# GET response, runs wrk for each case, prints the medians and cleans up. Traffic goes only to
# 127.0.0.1. Knobs (environment), with their defaults:
#
#   RUNS=5 DURATION=10      measured runs per case and seconds per run (plus a WARMUP=2 s run)
#   CONNS=32 WRK_THREADS=1  wrk connections (keep-alive) and threads, the same for every case
#   SERVER_THREADS=2        aicloud server --threads; NGINX_WORKERS defaults to the same number
#   LOG_LEVEL=warn SYNC=full  server --log-level (info = one access-log line per request) and --sync
#   SEED_PROJECTS=4         projects created before the GET runs (the list then holds 5)
#   CASES="get nginx post"  which cases to run (get and nginx runs are interleaved)
#   MAX_AUTH_MISSES=0       auth cache misses allowed during the GET runs before this fails
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${AICLOUD_BIN:-$ROOT/build/aicloud}
LUA=$ROOT/bench/http/wrk.lua
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-1}
SERVER_THREADS=${SERVER_THREADS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-$SERVER_THREADS}
LOG_LEVEL=${LOG_LEVEL:-warn}
SYNC=${SYNC:-full}
SEED_PROJECTS=${SEED_PROJECTS:-4}
CASES=${CASES:-get nginx post}
MAX_AUTH_MISSES=${MAX_AUTH_MISSES:-0}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"

[ -x "$BIN" ] || die "$BIN not found: build it first (make build)"
command -v wrk >/dev/null || die "wrk not found: run scripts/setup.sh (Debian package wrk)"
command -v curl >/dev/null || die "curl not found: run scripts/setup.sh"
has_case() { [[ " $CASES " == *" $1 "* ]]; }
if has_case nginx && [ ! -x "$NGINX" ]; then
  echo "bench: nginx not found ($NGINX); skipping the nginx case (Debian package nginx-light)" >&2
  CASES=${CASES//nginx/}
fi

TMP=$(mktemp -d /tmp/aicloud-bench-XXXXXX)
SERVER_PID=""
NGINX_PID=""
cleanup() {
  local rc=$?
  for pid in $NGINX_PID $SERVER_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] && [ -f "$TMP/server.log" ]; then
    echo "bench: failed; last lines of the server log:" >&2
    tail -n 20 "$TMP/server.log" >&2 || true
  fi
  if [ -n "${KEEP_TMP:-}" ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the server -------------------------------------------------------------------------------
start_server "$LOG_LEVEL" "$SERVER_THREADS" "$SYNC"

create_org bench
for i in $(seq "$SEED_PROJECTS"); do
  api POST /v1/organization/projects "$KEY" "" "{\"name\":\"seed project $i\"}" >/dev/null
done
GET_BODY=$(api GET /v1/organization/projects "$KEY" "")

# auth_counter NAME: a counter from /metrics (the cache counters of src/identity/auth.cpp).
auth_counter() { curl -sf "$URL/metrics" | sed -n "s/^$1 \([0-9]*\)$/\1/p"; }

# ---- nginx: the same bytes as a static file ---------------------------------------------------
start_nginx() {
  local ng=$TMP/nginx port
  mkdir -p "$ng/www" "$ng/logs"
  printf '%s' "$GET_BODY" >"$ng/www/projects.json"
  # Started by root, nginx's workers run as nobody: they must be able to reach the file.
  chmod 711 "$TMP" "$ng"
  chmod 755 "$ng/www"
  chmod 644 "$ng/www/projects.json"
  for _ in $(seq 20); do
    port=$((20000 + RANDOM % 40000))
    (: </dev/tcp/127.0.0.1/$port) 2>/dev/null && continue  # something listens there
    cat >"$ng/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $ng/nginx.pid;
error_log $ng/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
$(nginx_prelude "$ng")
  server {
    listen 127.0.0.1:$port;
    root $ng/www;
    location / { default_type application/json; }
  }
}
EOF
    "$NGINX" -p "$ng/" -c "$ng/nginx.conf" -e "$ng/logs/error.log" >"$ng/logs/stdout.log" 2>&1 &
    NGINX_PID=$!
    for _ in $(seq 50); do
      if curl -sf "http://127.0.0.1:$port/projects.json" >/dev/null 2>&1; then
        NGINX_URL="http://127.0.0.1:$port/projects.json"
        return 0
      fi
      kill -0 "$NGINX_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
  done
  cat "$ng/logs/error.log" >&2 || true
  die "could not start nginx"
}
NGINX_URL=""
has_case nginx && start_nginx

# ---- wrk ----------------------------------------------------------------------------------------
RESULTS=$TMP/results.txt
: >"$RESULTS"
# wrk_run CASE SECONDS URL [VAR=VALUE...]: one wrk run; appends
# "CASE rps p50_us p99_us non2xx errors server_cpu_us_per_request".
wrk_run() {
  local name=$1 secs=$2 url=$3 out line pid c0 c1
  shift 3
  pid=$SERVER_PID
  [ "$name" = nginx ] && pid=$NGINX_PID
  c0=$(cpu_ticks "$pid")
  out=$(env "$@" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s -s "$LUA" "$url" 2>&1) ||
    die "wrk failed: $out"
  c1=$(cpu_ticks "$pid")
  line=$(grep '^RESULT ' <<<"$out") || die "no RESULT line from wrk: $out"
  local rps p50 p99 non2xx errors requests cpu_us
  rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$line")
  requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
  # The serving process's CPU per request (microseconds): steadier than req/s on a busy machine.
  cpu_us=$(awk -v d=$((c1 - c0)) -v n="$requests" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }')
  p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
  non2xx=$(sed -n 's/.* non2xx=\([0-9]*\).*/\1/p' <<<"$line")
  errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$line")
  [ "${WARM:-0}" = 1 ] && return 0
  echo "$name $rps $p50 $p99 $non2xx $errors $cpu_us" >>"$RESULTS"
  printf '  %-6s run: %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  server CPU %5.1f us/req  non-2xx %s  socket errors %s\n' \
    "$name" "$rps" "$(awk "BEGIN{print $p50/1000}")" "$(awk "BEGIN{print $p99/1000}")" "$cpu_us" "$non2xx" "$errors"
}
GET_ENV=(BENCH_METHOD=GET "BENCH_KEY=$KEY")
POST_ENV=(BENCH_METHOD=POST "BENCH_KEY=$KEY" 'BENCH_BODY={"name":"bench project"}')
NGINX_ENV=(BENCH_METHOD=GET BENCH_KEY=)

echo "aicloud HTTP benchmark: $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n1)), $(uname -sr)"
echo "  aicloud $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') at $URL: --threads $SERVER_THREADS --log-level $LOG_LEVEL --sync $SYNC"
[ -n "$NGINX_URL" ] && echo "  $("$NGINX" -v 2>&1) at $NGINX_URL: worker_processes $NGINX_WORKERS, access_log off"
echo "  wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s (keep-alive), $RUNS runs per case after a ${WARMUP} s warm-up"
echo "  GET body: ${#GET_BODY} bytes ($((SEED_PROJECTS + 1)) projects)"
# cpu_busy: percent of all CPU time spent outside idle/iowait over the next second.
cpu_busy() {
  local a b
  a=($(head -n1 /proc/stat))
  sleep 1
  b=($(head -n1 /proc/stat))
  awk -v u=$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8])) \
    -v i=$((b[4] + b[5] - a[4] - a[5])) 'BEGIN { printf "%.0f", (u + i) ? 100 * u / (u + i) : 0 }'
}
BUSY0=$(cpu_busy)
echo "  CPU busy before the runs (other processes): ${BUSY0}%"
if [ "$BUSY0" -gt 10 ]; then
  echo "bench: warning: the machine is busy (${BUSY0}% CPU); wrk and the servers share its cores, so the figures will be low" >&2
fi

if has_case get || has_case nginx; then
  WARM=1
  has_case get && wrk_run get "$WARMUP" "$URL/v1/organization/projects" "${GET_ENV[@]}"
  has_case nginx && wrk_run nginx "$WARMUP" "$NGINX_URL" "${NGINX_ENV[@]}"
  WARM=0
  hits0=$(auth_counter aicloud_auth_cache_hits_total)
  miss0=$(auth_counter aicloud_auth_cache_misses_total)
  for _ in $(seq "$RUNS"); do
    has_case get && wrk_run get "$DURATION" "$URL/v1/organization/projects" "${GET_ENV[@]}"
    has_case nginx && wrk_run nginx "$DURATION" "$NGINX_URL" "${NGINX_ENV[@]}"
  done
  hits1=$(auth_counter aicloud_auth_cache_hits_total)
  miss1=$(auth_counter aicloud_auth_cache_misses_total)
fi
if has_case post; then
  WARM=1
  wrk_run post "$WARMUP" "$URL/v1/organization/projects" "${POST_ENV[@]}"
  WARM=0
  for _ in $(seq "$RUNS"); do
    wrk_run post "$DURATION" "$URL/v1/organization/projects" "${POST_ENV[@]}"
  done
fi

# ---- the table ----------------------------------------------------------------------------------
# median CASE COLUMN: the median of that column (2 = req/s, 3 = p50 us, 4 = p99 us, 7 = server
# CPU us per request) over the runs.
median() {
  awk -v c="$1" -v k="$2" '$1 == c { print $k }' "$RESULTS" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
total() { awk -v c="$1" -v k="$2" '$1 == c { s += $k } END { print s + 0 }' "$RESULTS"; }
label() {
  case $1 in
    get) echo "aicloud GET /v1/organization/projects (auth)" ;;
    post) echo "aicloud POST /v1/organization/projects (auth)" ;;
    nginx) echo "nginx GET static file (same body)" ;;
  esac
}
echo
echo "Medians of $RUNS runs x ${DURATION} s, wrk -t$WRK_THREADS -c$CONNS:"
printf '%-46s %10s %9s %9s %12s %8s %8s\n' case "req/s" "p50 ms" "p99 ms" "CPU us/req" non-2xx errors
for c in get nginx post; do
  has_case "$c" || continue
  printf '%-46s %10.0f %9.2f %9.2f %12.1f %8d %8d\n' "$(label "$c")" "$(median "$c" 2)" \
    "$(awk "BEGIN{print $(median "$c" 3)/1000}")" "$(awk "BEGIN{print $(median "$c" 4)/1000}")" \
    "$(median "$c" 7)" "$(total "$c" 5)" "$(total "$c" 6)"
done
status=0
if has_case get && has_case nginx; then
  awk -v a="$(median get 2)" -v b="$(median nginx 2)" \
    'BEGIN { printf "aicloud GET / nginx static: %.2f of nginx'"'"'s requests per second\n", a / b }'
  awk -v a="$(median get 7)" -v b="$(median nginx 7)" \
    'BEGIN { if (b > 0) printf "CPU per request, aicloud GET / nginx static: %.1fx\n", a / b }'
fi
if has_case get; then
  rps=$(median get 2)
  p99=$(median get 4)
  verdict=$(awk -v r="$rps" -v p="$p99" 'BEGIN { print (r >= 20000 && p < 5000) ? "MET" : "MISSED" }')
  echo "target (GET >= 20000 req/s with p99 < 5 ms): $verdict"
  misses=$((miss1 - miss0))
  echo "auth cache during the GET runs: $((hits1 - hits0)) hits, $misses misses (a miss reads the database)"
  if [ "$misses" -gt "$MAX_AUTH_MISSES" ]; then
    echo "bench: the key lookup read the database on the hot path ($misses misses)" >&2
    status=1
  fi
fi
for c in get nginx post; do
  has_case "$c" || continue
  if [ "$(total "$c" 5)" -gt 0 ]; then
    echo "bench: $(label "$c") had non-2xx responses; the figures are not valid" >&2
    status=1
  fi
done
exit "$status"
