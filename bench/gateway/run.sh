#!/usr/bin/env bash
# The gateway's overhead and its end-to-end token throughput, with real peers on this machine.
#
#   bench/gateway/run.sh            (or: make bench-gateway)
#
# Overhead: nginx serves a canned chat completion (and a canned SSE stream with a usage chunk) on
# loopback. The same request is sent three ways, each run interleaved with the others:
#   direct   to that nginx;
#   nginx    through a second nginx, a reverse proxy (keep-alive upstream) in its own processes,
#            as the gateway is (NGINX_PROXY=shared: the proxy as server blocks of the canned nginx
#            instead, so that its workers serve both roles and often hand a request to themselves);
#   gateway  through aicloud: the canned nginx is an operator-registered external endpoint
#            (gateway/endpoints.h), so the request is authenticated with a project key,
#            rate-limited and metered (its usage record journaled, and with --sync full
#            fdatasynced in a group, before the answer ends), exactly like a model deployment's.
# at a fixed rate (open loop, latency from when each request was due) and at saturation (closed
# loop). Added latency = the proxy's percentile minus direct's in the same round.
#
# Tokens: llama-server (the pinned engine, built by `make engine`) serves the tiny model with
# SLOTS parallel slots; SLOTS clients generate MAX_TOKENS each, directly and through the gateway
# (the same llama-server registered as an endpoint): completion tokens per second, and the ratio.
#
# Knobs (environment), with their defaults:
#   RUNS=3 DURATION=10 WARMUP=2   rounds, seconds measured per run, warm-up seconds per run
#   RATE=2000 CONNS=32            the fixed rate (requests/s) and connections (keep-alive)
#   SERVER_THREADS=2              aicloud server --threads; nginx worker_processes the same
#   NGINX_PROXY=separate          separate | shared (see above)
#   SYNC=full                     aicloud server --sync (full: each group of usage records is
#                                 fdatasynced before the answers in it end; normal: each record is
#                                 written to the OS first, which survives kill -9 but not a power cut)
#   CASES="whole stream tokens"   whole and stream: the overhead cases; tokens: llama-server
#   MODES="rate saturate"         which of the overhead cases' two loads to run
#   ENGINE_NICE=10                the llama-server's nice level: the agent runs a model replica 10
#                                 levels below itself (aicloud agent --workload-nice), so that on a
#                                 CPU node the gateway's threads are not kept waiting by its compute
#                                 threads; 0 runs them at the same priority
#   SLOTS=4 MAX_TOKENS=64 TOKEN_SECONDS=8 TOKEN_ROUNDS=8   (short rounds, many of them: the
#                                 machine's speed drifts by ±20% over minutes, so only back-to-back
#                                 pairs compare, and the median of their ratios is the figure)
#   HOLD=1                        set up, print how to drive the gateway by hand, wait (profiling)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${AICLOUD_BIN:-$ROOT/build/aicloud}
LOADGEN=${LOADGEN:-$(dirname "$BIN")/bench/gateway_loadgen}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RATE=${RATE:-2000}
CONNS=${CONNS:-32}
SERVER_THREADS=${SERVER_THREADS:-2}
SYNC=${SYNC:-full}
NGINX_WORKERS=${NGINX_WORKERS:-$SERVER_THREADS}
NGINX_PROXY=${NGINX_PROXY:-separate}
case $NGINX_PROXY in separate | shared) ;; *) echo "bench: NGINX_PROXY is separate or shared" >&2; exit 1 ;; esac
CASES=${CASES:-whole stream tokens}
MODES=${MODES:-rate saturate}
for m in $MODES; do
  case $m in rate | saturate) ;; *) echo "bench: MODES holds rate and/or saturate, not '$m'" >&2; exit 1 ;; esac
done
ENGINE_NICE=${ENGINE_NICE:-10}
SLOTS=${SLOTS:-4}
MAX_TOKENS=${MAX_TOKENS:-64}
TOKEN_SECONDS=${TOKEN_SECONDS:-8}
TOKEN_ROUNDS=${TOKEN_ROUNDS:-8}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
ENGINE=${ENGINE:-$HOME/.cache/aicloud/engine/llama.cpp-v0.5.0-cpu/bin/llama-server}

TMP=$(mktemp -d /tmp/aicloud-gwbench-XXXXXX)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
has_case() { [[ " $CASES " == *" $1 "* ]]; }
[ -x "$BIN" ] || die "$BIN not found: build it first (make build)"
[ -x "$LOADGEN" ] || die "$LOADGEN not found: build it first (make build)"
[ -x "$NGINX" ] || die "nginx not found ($NGINX): Debian package nginx-light (scripts/setup.sh)"
if has_case tokens && [ ! -x "$ENGINE" ]; then
  echo "bench: no engine at $ENGINE (make engine); skipping the tokens case" >&2
  CASES=${CASES//tokens/}
fi

SERVER_PID="" NGINX_PID="" PROXY_PID="" ENGINE_PID=""
cleanup() {
  local rc=$?
  for pid in $ENGINE_PID $PROXY_PID $NGINX_PID $SERVER_PID; do
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

# ---- nginx: the canned upstreams and the reverse proxy -----------------------------------------
WHOLE='{"id":"chatcmpl-canned","object":"chat.completion","created":1700000000,"model":"canned","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
SSE=''
for w in Hello '!' ' How' ' can' ' I' ' help' ' you' ' today' '?'; do
  SSE+="data: {\"id\":\"chatcmpl-canned\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"canned\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"$w\"},\"finish_reason\":null}]}\n\n"
done
SSE+='data: {"id":"chatcmpl-canned","object":"chat.completion.chunk","created":1700000000,"model":"canned","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}\n\ndata: [DONE]\n\n'
P_WHOLE=$(free_port) P_STREAM=$(free_port) P_PROXY=$(free_port) P_PROXY_STREAM=$(free_port)
# nginx_conf DIR SERVERS: a whole nginx.conf around SERVERS (its http block's servers).
nginx_conf() {
  mkdir -p "$1/logs"
  chmod 711 "$1"
  cat >"$1/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
$(nginx_prelude "$1")
$2
}
EOF
}
# start_nginx DIR PROBE_PORT: starts it in the background; NGINX_STARTED is its master's pid.
start_nginx() {
  "$NGINX" -p "$1/" -c "$1/nginx.conf" -e "$1/logs/error.log" >"$1/logs/stdout.log" 2>&1 &
  NGINX_STARTED=$!
  for _ in $(seq 50); do
    curl -s -o /dev/null -X POST "http://127.0.0.1:$2/v1/chat/completions" -d '{}' 2>/dev/null && return 0
    kill -0 "$NGINX_STARTED" 2>/dev/null || { cat "$1/logs/error.log" >&2; die "nginx exited"; }
    sleep 0.1
  done
  die "nginx ($1) does not answer"
}
chmod 711 "$TMP"
CANNED="
  server {
    listen 127.0.0.1:$P_WHOLE;
    location / { default_type application/json; return 200 '$WHOLE'; }
  }
  server {
    listen 127.0.0.1:$P_STREAM;
    location / { default_type text/event-stream; return 200 \"$(printf '%s' "$SSE" | sed 's/"/\\"/g')\"; }
  }"
PROXY="
  upstream canned_whole { server 127.0.0.1:$P_WHOLE; keepalive 64; }
  upstream canned_stream { server 127.0.0.1:$P_STREAM; keepalive 64; }
  server {
    listen 127.0.0.1:$P_PROXY;
    location / { proxy_pass http://canned_whole; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }
  server {
    listen 127.0.0.1:$P_PROXY_STREAM;
    location / {
      proxy_pass http://canned_stream; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
if [ "$NGINX_PROXY" = shared ]; then
  nginx_conf "$TMP/nginx" "$CANNED$PROXY"
  start_nginx "$TMP/nginx" "$P_PROXY"
  NGINX_PID=$NGINX_STARTED PROXY_PID=$NGINX_STARTED
else
  nginx_conf "$TMP/nginx" "$CANNED"
  nginx_conf "$TMP/nginx-proxy" "$PROXY"
  start_nginx "$TMP/nginx" "$P_WHOLE"
  NGINX_PID=$NGINX_STARTED
  start_nginx "$TMP/nginx-proxy" "$P_PROXY"
  PROXY_PID=$NGINX_STARTED
fi
curl -sf -X POST "http://127.0.0.1:$P_PROXY/v1/chat/completions" -d '{}' | grep -q chatcmpl-canned ||
  die "the canned completion is not served through the proxy"
curl -sf -X POST "http://127.0.0.1:$P_PROXY_STREAM/v1/chat/completions" -d '{}' | grep -q '\[DONE\]' ||
  die "the canned stream is not served"

# ---- aicloud: a tenant, the endpoints, limits high enough not to interfere --------------------
start_server warn "$SERVER_THREADS" "$SYNC"
api POST /admin/v1/regions "$OPERATOR_KEY" "" '{"id":"bench-1","jurisdiction":"EU"}' >/dev/null
create_org bench
PROJECT=$(api POST /v1/organization/projects "$KEY" "" '{"name":"bench"}' | field id)
PKEY=$(api POST "/v1/organization/projects/$PROJECT/api_keys" "$KEY" "" '{"name":"bench"}' | field value)
endpoint() {  # endpoint MODEL PORT
  api POST /admin/v1/endpoints "$OPERATOR_KEY" "" \
    "{\"model\":\"$1\",\"url\":\"http://127.0.0.1:$2/v1\",\"region\":\"bench-1\",\"organization_id\":\"$ORG\"}" >/dev/null
  api POST "/v1/organization/projects/$PROJECT/rate_limits/rl-$1" "$KEY" "" \
    '{"max_requests_per_1_minute":1000000000,"max_tokens_per_1_minute":1000000000000}' >/dev/null
}
endpoint canned "$P_WHOLE"
endpoint canned-stream "$P_STREAM"
body() {  # body FILE MODEL STREAM MAX_TOKENS
  printf '{"model":"%s","messages":[{"role":"user","content":"Write a short greeting for a new user of this cloud."}],"max_tokens":%s%s}' \
    "$2" "$4" "$( [ "$3" = true ] && echo ',"stream":true,"stream_options":{"include_usage":true}')" >"$1"
}
body "$TMP/whole.json" canned false 16
body "$TMP/stream.json" canned-stream true 16
wait_served() {  # wait_served BODY_FILE: until the gateway serves the endpoint (the controller's next round)
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/chat/completions" -H "Authorization: Bearer $PKEY" \
      -H 'Content-Type: application/json' --data @"$1")" = 200 ] && return 0
    sleep 0.1
  done
  die "the gateway does not serve $(cat "$1")"
}
wait_served "$TMP/whole.json"
wait_served "$TMP/stream.json"
if [ -n "${HOLD:-}" ]; then  # for profiling: keep everything up and say how to drive it
  cat <<EOT
bench: holding (Ctrl-C ends). Drive the gateway with:
  $LOADGEN --url $URL/v1/chat/completions --body-file $TMP/whole.json --key $PKEY --connections $CONNS --seconds 10
server pid $SERVER_PID; nginx direct :$P_WHOLE, proxy :$P_PROXY, stream direct :$P_STREAM, proxy :$P_PROXY_STREAM; nginx pid $NGINX_PID, proxy pid $PROXY_PID ($NGINX_PROXY)
EOT
  sleep infinity
fi

# ---- runs ---------------------------------------------------------------------------------------
RESULTS=$TMP/results.txt
: >"$RESULTS"
# run MODE KIND TARGET URL BODY [KEY]: one loadgen run; appends
# "MODE KIND TARGET rps p50_us p99_us errors tokens_per_s server_cpu_us_per_request".
run() {
  local mode=$1 kind=$2 target=$3 url=$4 bodyf=$5 key=${6:-} out line rate=0 conns=$CONNS secs=$DURATION c0 c1 pid
  [ "$mode" = rate ] && rate=$RATE
  [ "$mode" = tokens ] && { conns=$SLOTS; secs=$TOKEN_SECONDS; }
  pid=$NGINX_PID
  [ "$target" = nginx ] && pid=$PROXY_PID
  [ "$target" = gateway ] && pid=$SERVER_PID
  c0=$(cpu_ticks "$pid")
  out=$("$LOADGEN" --url "$url" --body-file "$bodyf" ${key:+--key "$key"} --connections "$conns" --rate "$rate" \
    --seconds "$secs" --warmup "$WARMUP" --tokens 2>&1) || die "loadgen failed: $out"
  c1=$(cpu_ticks "$pid")
  line=$(grep '^RESULT ' <<<"$out") || die "no RESULT from loadgen: $out"
  get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
  local requests cpu
  requests=$(get requests)
  cpu=$(awk -v d=$((c1 - c0)) -v n="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", n ? d * 1e6 / hz / n : 0 }')
  echo "$mode $kind $target $(get rps) $(get p50_us) $(get p99_us) $(get errors) $(get tokens_per_s) $cpu" | tee -a "$RESULTS"
  [ "$(get errors)" = 0 ] || echo "bench: $mode $kind $target had errors: $(grep 'first error' <<<"$out")" >&2
}

# overhead MODE KIND ROUND: direct, then the two proxies back to back, nginx first in odd rounds
# and the gateway first in even ones (ABBA...), so that a machine that drifts over a round's
# seconds favours neither.
overhead() {
  local direct_port=$P_WHOLE proxy_port=$P_PROXY body=$TMP/$2.json
  [ "$2" = stream ] && { direct_port=$P_STREAM; proxy_port=$P_PROXY_STREAM; }
  run "$1" "$2" direct "http://127.0.0.1:$direct_port/v1/chat/completions" "$body"
  if [ $(($3 % 2)) = 1 ]; then
    run "$1" "$2" nginx "http://127.0.0.1:$proxy_port/v1/chat/completions" "$body"
    run "$1" "$2" gateway "$URL/v1/chat/completions" "$body" "$PKEY"
  else
    run "$1" "$2" gateway "$URL/v1/chat/completions" "$body" "$PKEY"
    run "$1" "$2" nginx "http://127.0.0.1:$proxy_port/v1/chat/completions" "$body"
  fi
}
echo "mode kind target rps p50_us p99_us errors tokens_per_s proxy_cpu_us_per_req"
for r in $(seq "$RUNS"); do
  for mode in $MODES; do
    for kind in whole stream; do
      has_case "$kind" && overhead "$mode" "$kind" "$r"
    done
  done
done

# ---- tokens through the gateway vs llama-server direct ------------------------------------------
if has_case tokens; then
  "$BIN" models create-tiny --name bench-tiny --out "$TMP/tiny.gguf" >/dev/null
  P_ENGINE=$(free_port)
  nice -n "$ENGINE_NICE" "$ENGINE" -m "$TMP/tiny.gguf" --host 127.0.0.1 --port "$P_ENGINE" -np "$SLOTS" -c $((SLOTS * 512)) --no-ui \
    --alias tiny >"$TMP/engine.log" 2>&1 &
  ENGINE_PID=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$P_ENGINE/health" >/dev/null 2>&1 && break
    kill -0 "$ENGINE_PID" 2>/dev/null || { tail "$TMP/engine.log" >&2; die "llama-server exited"; }
    sleep 0.1
  done
  endpoint tiny "$P_ENGINE"
  body "$TMP/tiny.json" tiny false "$MAX_TOKENS"
  wait_served "$TMP/tiny.json"
  # Alternating which goes first (ABBA...), so that a machine that slows down or speeds up over
  # the runs does not favour either side.
  for r in $(seq "$TOKEN_ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      run tokens whole direct "http://127.0.0.1:$P_ENGINE/v1/chat/completions" "$TMP/tiny.json"
      run tokens whole gateway "$URL/v1/chat/completions" "$TMP/tiny.json" "$PKEY"
    else
      run tokens whole gateway "$URL/v1/chat/completions" "$TMP/tiny.json" "$PKEY"
      run tokens whole direct "http://127.0.0.1:$P_ENGINE/v1/chat/completions" "$TMP/tiny.json"
    fi
  done
fi

# Group commit: usage records per commit and the mean commit time, over the whole run.
metric() { curl -sf "$URL/metrics" | sed -n "s/^$1 \([0-9.e+-]*\)$/\1/p"; }
RECORDS=$(metric aicloud_usage_records_committed_total) COMMITS=$(metric aicloud_usage_commits_total)
COMMIT_S=$(metric aicloud_usage_commit_seconds_total)

# ---- medians ------------------------------------------------------------------------------------
col() { awk -v m="$1" -v k="$2" -v t="$3" -v c="$4" '$1 == m && $2 == k && $3 == t { print $c }' "$RESULTS" | median_stdin; }
echo
has_case whole || has_case stream &&
  echo "Medians of $RUNS runs (${DURATION}s each; rate = $RATE req/s open loop, saturate = $CONNS connections closed loop):" &&
  printf '%-9s %-7s %-8s %10s %9s %9s %12s %12s %9s\n' mode kind target "req/s" "p50 us" "p99 us" "added p50" "added p99" "vs nginx"
for mode in $MODES; do
  for kind in whole stream; do
    has_case "$kind" || continue
    d50=$(col $mode $kind direct 5) d99=$(col $mode $kind direct 6) nrps=$(col $mode $kind nginx 4)
    for target in direct nginx gateway; do
      rps=$(col $mode $kind $target 4) p50=$(col $mode $kind $target 5) p99=$(col $mode $kind $target 6)
      printf '%-9s %-7s %-8s %10.0f %9.0f %9.0f %12s %12s %9s\n' $mode $kind $target "$rps" "$p50" "$p99" \
        "$([ $target = direct ] && echo - || awk -v a="$p50" -v b="$d50" 'BEGIN { printf "%+.0f us", a - b }')" \
        "$([ $target = direct ] && echo - || awk -v a="$p99" -v b="$d99" 'BEGIN { printf "%+.0f us", a - b }')" \
        "$(awk -v a="$rps" -v b="$nrps" 'BEGIN { printf "%.2fx", b ? a / b : 0 }')"
    done
    # At saturation, each round's gateway / nginx (the two ran back to back) and their median:
    # steadier than the ratio of the medians when the machine's speed drifts between rounds.
    [ "$mode" = saturate ] || continue
    pairs=$(paste <(awk -v m="$mode" -v k="$kind" '$1 == m && $2 == k && $3 == "nginx" { print $4 }' "$RESULTS") \
      <(awk -v m="$mode" -v k="$kind" '$1 == m && $2 == k && $3 == "gateway" { print $4 }' "$RESULTS") |
      awk '$1 > 0 { printf "%.2f\n", $2 / $1 }')
    echo "          $mode $kind: gateway / nginx per round $(echo "$pairs" | paste -sd,), median $(echo "$pairs" | median_stdin | xargs printf "%.2f")x"
  done
done
awk -v r="$RECORDS" -v c="$COMMITS" -v s="$COMMIT_S" -v m="$SYNC" 'BEGIN { if (c > 0)
  printf "Metering (--sync %s): %d usage records in %d journal commits (fdatasyncs under full, writes under normal): %.1f records per commit, %.0f us per commit\n", m, r, c, r / c, s * 1e6 / c }'
if has_case tokens; then
  dt=$(col tokens whole direct 8) gt=$(col tokens whole gateway 8)
  echo
  # Each round's ratio (the pair ran back to back), and their median: steadier than the ratio of
  # the medians when the machine's speed drifts between rounds.
  pairs=$(paste <(awk '$1 == "tokens" && $3 == "direct" { print $8 }' "$RESULTS") \
    <(awk '$1 == "tokens" && $3 == "gateway" { print $8 }' "$RESULTS") | awk '$1 > 0 { printf "%.3f\n", $2 / $1 }')
  echo "Tokens ($SLOTS slots, $SLOTS clients, max_tokens $MAX_TOKENS, ${TOKEN_SECONDS}s): direct $dt tok/s," \
    "through the gateway $gt tok/s (medians); per round, gateway / direct: $(echo $pairs | tr ' ' ','), median" \
    "$(echo "$pairs" | median_stdin) of direct"
fi
