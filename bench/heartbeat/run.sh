#!/usr/bin/env bash
# The control plane under 10,000 node agents: join them, then measure their heartbeats.
#
#   bench/heartbeat/run.sh        (after make build; figures in docs/PERFORMANCE.md)
#
# Builds nothing: it runs build/aicloud and build/bench/agent_load (AICLOUD_BIN, AGENT_LOAD
# override). It starts a server with a fresh data dir on 127.0.0.1, creates a region and a join
# token with the operator key (DATA_DIR/admin.key), joins AGENTS nodes through POST
# /agent/v1/join (each gets its own node credential), then, with one keep-alive connection per
# agent as the real agent holds:
#   idle:     every connection open, nothing sent: the server's own background CPU (the
#             scheduler controller's rounds) with AGENTS nodes stored;
#   beat:     each agent sends POST /agent/v1/heartbeat every INTERVAL_MS (10,000 agents at
#             5 s = 2,000/s), open loop, RUNS times: server CPU (utime + stime from
#             /proc/PID/stat) over the window, latency p50/p99 measured from when each beat
#             was due;
#   agent:    (POLL_MS > 0) the agent's loop before its long-poll: the beats plus GET
#             /agent/v1/assignments every POLL_MS per agent (20,000/s more at 10,000 agents);
#   longpoll: (LONG_POLL_S > 0) the real agent's loop (src/agent/agent.cpp): the beats, and one
#             long-poll per agent on a second connection, GET /agent/v1/assignments?wait=
#             LONG_POLL_S&after=VERSION, held by the server and sent again when answered (nothing
#             changes, so each is answered when its wait ends: AGENTS / LONG_POLL_S a second);
#   saturate: closed loop over SAT_CONNS agents: the most heartbeats per second.
# Knobs (environment), with their defaults:
#   AGENTS=10000 INTERVAL_MS=5000 SECONDS_PER_RUN=30 WARMUP=5 RUNS=3 POLL_MS=500 (0 = skip the agent case)
#   LONG_POLL_S=25 (0 = skip the longpoll case)
#   SAT_CONNS=64 SAT_SECONDS=10 JOIN_CONCURRENCY=32 SERVER_THREADS=2 SYNC=full LOG_LEVEL=warn
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${AICLOUD_BIN:-$ROOT/build/aicloud}
LOAD=${AGENT_LOAD:-$ROOT/build/bench/agent_load}
AGENTS=${AGENTS:-10000}
INTERVAL_MS=${INTERVAL_MS:-5000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-30}
WARMUP=${WARMUP:-5}
RUNS=${RUNS:-3}
POLL_MS=${POLL_MS:-500}
LONG_POLL_S=${LONG_POLL_S:-25}
SAT_CONNS=${SAT_CONNS:-64}
SAT_SECONDS=${SAT_SECONDS:-10}
JOIN_CONCURRENCY=${JOIN_CONCURRENCY:-32}
SERVER_THREADS=${SERVER_THREADS:-2}
SYNC=${SYNC:-full}
LOG_LEVEL=${LOG_LEVEL:-warn}

die() { echo "bench: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "$BIN not found: build it first (make build)"
[ -x "$LOAD" ] || die "$LOAD not found: build it first (make build; the bench targets are on by default)"
command -v curl >/dev/null || die "curl not found: run scripts/setup.sh"
# One socket per agent on each side (the server and the generator are separate processes); two
# with long-polls.
want_fds=$((AGENTS + 256))
if [ "$LONG_POLL_S" -gt 0 ]; then want_fds=$((2 * AGENTS + 256)); fi
if [ "$(ulimit -n)" -lt "$want_fds" ]; then
  ulimit -n "$want_fds" 2>/dev/null || die "ulimit -n is $(ulimit -n); $want_fds needed for $AGENTS agents"
fi

TMP=$(mktemp -d /tmp/aicloud-hb-XXXXXX)
SERVER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$TMP/server.log" ]; then
    echo "bench: failed; last lines of the server log:" >&2
    tail -n 20 "$TMP/server.log" >&2 || true
  fi
  if [ -n "${KEEP_TMP:-}" ]; then echo "bench: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN" server --listen 127.0.0.1:0 --data-dir "$TMP/data" --log-level "$LOG_LEVEL" --threads "$SERVER_THREADS" \
  --sync "$SYNC" --heartbeat-interval-ms "$INTERVAL_MS" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
URL=""
for _ in $(seq 150); do
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start"
  if [ -s "$TMP/data/server.url" ]; then
    URL=$(head -n1 "$TMP/data/server.url")
    curl -sf "$URL/healthz" >/dev/null 2>&1 && break
  fi
  URL=""
  sleep 0.1
done
[ -n "$URL" ] || die "the server did not become healthy in 15 s"
[[ "$URL" == http://127.0.0.1:* ]] || die "unexpected server URL $URL (want 127.0.0.1)"
OPERATOR_KEY=$(head -n1 "$TMP/data/admin.key")

api() {  # api METHOD PATH BODY: prints the body; fails unless the status is 2xx
  local out code
  out=$(curl -sS -X "$1" "$URL$2" -H "Authorization: Bearer $OPERATOR_KEY" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} -w $'\n%{http_code}')
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  [[ "$code" == 2* ]] || die "$1 $2: HTTP $code: $out"
  printf '%s' "$out"
}
api POST /admin/v1/regions '{"id":"bench-1","name":"Bench 1","jurisdiction":"EU"}' >/dev/null
TOKEN=$(api POST /admin/v1/join_tokens "{\"region\":\"bench-1\",\"max_uses\":$AGENTS,\"description\":\"heartbeat bench\"}" |
  sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[[ "$TOKEN" == ajt-* ]] || die "could not create a join token"

echo "aicloud heartbeat benchmark: $(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n1)), $(uname -sr)"
echo "  aicloud $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') at $URL: --threads $SERVER_THREADS --sync $SYNC --log-level $LOG_LEVEL"
echo "  $AGENTS agents, one keep-alive connection each; heartbeat every $INTERVAL_MS ms; $RUNS runs x $SECONDS_PER_RUN s after $WARMUP s warm-up"
echo

echo "join: $AGENTS nodes, $JOIN_CONCURRENCY at a time (each join is a write transaction, audited)"
"$LOAD" join --url "$URL" --token "$TOKEN" --nodes "$AGENTS" --concurrency "$JOIN_CONCURRENCY" --out "$TMP/keys.txt" |
  tee "$TMP/join.txt"
echo

RESULTS=$TMP/results.txt
: >"$RESULTS"
record() { sed -n "s/^RESULT /$1 /p" >>"$RESULTS"; }

echo "idle: $AGENTS connections open, no requests ($SECONDS_PER_RUN s)"
# --interval-ms 0: the connections open, nothing is sent.
"$LOAD" beat --url "$URL" --keys "$TMP/keys.txt" --agents "$AGENTS" --interval-ms 0 --seconds "$SECONDS_PER_RUN" \
  --warmup 1 --pid "$SERVER_PID" | tee "$TMP/out.txt" | grep -v '^RESULT'
record idle <"$TMP/out.txt"
# The one busy thread while nothing is sent is the server's background loop (the scheduler
# controller's rounds); the runs below split the server's CPU into it and the rest (HTTP).
BG_TID=$(sed -n 's/^RESULT .* busiest_tid=\([0-9]*\).*/\1/p' "$TMP/out.txt")
echo

for r in $(seq "$RUNS"); do
  echo "beat run $r:"
  "$LOAD" beat --url "$URL" --keys "$TMP/keys.txt" --agents "$AGENTS" --interval-ms "$INTERVAL_MS" \
    --seconds "$SECONDS_PER_RUN" --warmup "$WARMUP" --pid "$SERVER_PID" --background-tid "$BG_TID" | tee "$TMP/out.txt" |
    grep -v '^RESULT'
  record beat <"$TMP/out.txt"
done
echo
if [ "$POLL_MS" -gt 0 ]; then
  for r in $(seq "$RUNS"); do
    echo "agent run $r (heartbeats + assignment polls every $POLL_MS ms):"
    "$LOAD" beat --url "$URL" --keys "$TMP/keys.txt" --agents "$AGENTS" --interval-ms "$INTERVAL_MS" --poll-ms "$POLL_MS" \
      --seconds "$SECONDS_PER_RUN" --warmup "$WARMUP" --pid "$SERVER_PID" --background-tid "$BG_TID" | tee "$TMP/out.txt" |
      grep -v '^RESULT'
    record agent <"$TMP/out.txt"
  done
  echo
fi
if [ "$LONG_POLL_S" -gt 0 ]; then
  for r in $(seq "$RUNS"); do
    echo "longpoll run $r (heartbeats + one long-poll per agent held up to $LONG_POLL_S s):"
    # The warm-up covers one whole wait, so that the long-polls' answers are spread as in steady state.
    "$LOAD" beat --url "$URL" --keys "$TMP/keys.txt" --agents "$AGENTS" --interval-ms "$INTERVAL_MS" \
      --long-poll-s "$LONG_POLL_S" --seconds "$SECONDS_PER_RUN" --warmup "$((WARMUP > LONG_POLL_S ? WARMUP : LONG_POLL_S))" \
      --pid "$SERVER_PID" --background-tid "$BG_TID" | tee "$TMP/out.txt" | grep -v '^RESULT'
    record longpoll <"$TMP/out.txt"
  done
  echo
fi
for r in $(seq "$RUNS"); do
  echo "saturate run $r ($SAT_CONNS connections, closed loop):"
  "$LOAD" saturate --url "$URL" --keys "$TMP/keys.txt" --connections "$SAT_CONNS" --seconds "$SAT_SECONDS" \
    --pid "$SERVER_PID" --background-tid "$BG_TID" | tee "$TMP/out.txt" | grep -v '^RESULT'
  record saturate <"$TMP/out.txt"
done

# median CASE KEY: the median of KEY=value over that case's runs.
median() {
  sed -n "s/^$1 .*[ ]$2=\([-0-9.]*\).*/\1/p" "$RESULTS" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }
echo
echo "Medians ($RUNS runs; CPU in cores, 1.00 = one core busy; the machine has $(nproc)). Server CPU = HTTP threads +"
echo "the background thread (the scheduler controller's rounds, which read every stored node each round):"
printf '%-56s %8s %8s %8s %8s %8s %8s %9s\n' case "req/s" "p50 ms" "p99 ms" server "HTTP" backgr. generator
row() {  # row LABEL CASE RATE_KEY P50_KEY P99_KEY
  printf '%-56s %8.0f %8s %8s %8s %8s %8s %9s\n' "$1" "$(median "$2" "$3")" "$(ms "$(median "$2" "$4")")" \
    "$(ms "$(median "$2" "$5")")" "$(median "$2" server_cpu)" "$(median "$2" http_cpu)" "$(median "$2" background_cpu)" \
    "$(median "$2" generator_cpu)"
}
printf '%-56s %8s %8s %8s %8s %8s %8s %9s\n' "idle: $AGENTS connections open, nothing sent" 0 - - \
  "$(median idle server_cpu)" "-" "$(median idle server_cpu)" "$(median idle generator_cpu)"
row "heartbeats: $AGENTS agents, one every $INTERVAL_MS ms each" beat beat_rate beat_p50_us beat_p99_us
if [ "$POLL_MS" -gt 0 ]; then
  row "agent loop, heartbeats (+ polls every $POLL_MS ms)" agent beat_rate beat_p50_us beat_p99_us
  printf '%-56s %8.0f %8s %8s\n' "agent loop, assignment polls" "$(median agent poll_rate)" \
    "$(ms "$(median agent poll_p50_us)")" "$(ms "$(median agent poll_p99_us)")"
fi
if [ "$LONG_POLL_S" -gt 0 ]; then
  row "long-poll agents, heartbeats (+ $AGENTS long-polls held)" longpoll beat_rate beat_p50_us beat_p99_us
  printf '%-56s %8.0f %8s %8s\n' "long-poll agents, long-polls answered (at wait's end)" "$(median longpoll long_poll_rate)" - -
fi
row "saturation: heartbeats over $SAT_CONNS connections, closed loop" saturate beat_rate beat_p50_us beat_p99_us
echo "CPU of everything else on the machine during the heartbeat runs (median): $(median beat other_cpu) cores"
