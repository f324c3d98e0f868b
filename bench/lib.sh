# Shared by the benchmark scripts (bench/*/run.sh): sourced, not run. Expects $TMP (a scratch
# dir) and $BIN (build/aicloud). Everything listens on 127.0.0.1 only.

die() { echo "bench: $*" >&2; exit 1; }

# start_server LOG_LEVEL THREADS SYNC: `aicloud server` on a free loopback port with a fresh data
# dir under $TMP; sets SERVER_PID, URL and OPERATOR_KEY.
start_server() {
  "$BIN" server --listen 127.0.0.1:0 --data-dir "$TMP/data" --log-level "$1" \
    --threads "$2" --sync "$3" >"$TMP/server.log" 2>&1 &
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
}

# api METHOD PATH KEY ORG [BODY]: prints the body; fails unless the status is 2xx.
api() {
  local out code
  out=$(curl -sS -X "$1" "$URL$2" -H "Authorization: Bearer $3" ${4:+-H "OpenAI-Organization: $4"} \
    -H 'Content-Type: application/json' ${5:+--data "$5"} -w $'\n%{http_code}')
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  [[ "$code" == 2* ]] || die "$1 $2: HTTP $code: $out"
  printf '%s' "$out"
}
# field NAME: the first "NAME":"string" of the JSON on stdin.
field() { sed -n "s/^[^{]*{.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n1; }

# create_org NAME: an organization with an owner and an admin key; sets ORG and KEY.
create_org() {
  ORG=$(api POST /admin/v1/organizations "$OPERATOR_KEY" "" \
    "{\"name\":\"$1\",\"owner_email\":\"$1-owner@example.com\",\"owner_password\":\"correct horse battery\"}" | field id)
  [ -n "$ORG" ] || die "could not create the organization"
  KEY=$(api POST /v1/organization/admin_api_keys "$OPERATOR_KEY" "$ORG" '{"name":"bench admin"}' | field value)
  [[ "$KEY" == sk-admin-* ]] || die "could not create an admin key"
}

# free_port: a loopback port nothing listens on now, below the kernel's range of ephemeral ports
# (a port there may be held by one end of a connection, which nginx's bind() then fails on).
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 50); do
    port=$((10000 + RANDOM % (low - 10000)))
    (: </dev/tcp/127.0.0.1/$port) 2>/dev/null && continue
    echo "$port"
    return 0
  done
  die "no free port found"
}

# nginx_prelude DIR: the lines an nginx.conf's http block needs so that nginx run by a user keeps
# its temp files under DIR (the compiled-in paths are root's), for the modules this nginx has.
nginx_prelude() {
  local m
  for m in proxy fastcgi uwsgi scgi; do
    "$NGINX" -V 2>&1 | grep -q -- "--without-http_${m}_module" || echo "  ${m}_temp_path $1/${m}_temp;"
  done
  echo "  client_body_temp_path $1/body_temp;"
}

# cpu_ticks PID...: utime + stime (all threads) of those processes and of their children (nginx:
# the master and its workers), in clock ticks, from /proc/PID/stat.
cpu_ticks() {
  local p pids=() t=0 v
  for p in "$@"; do pids+=("$p" $(pgrep -P "$p" 2>/dev/null || true)); done
  for p in "${pids[@]}"; do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || continue
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# median_stdin: the median of the numbers on stdin, one per line.
median_stdin() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# hold_gateway_bench CASES LOG: bench/gateway/run.sh set up and held (HOLD=1) in a process group
# of its own, for the scripts that drive its processes by hand (syscalls.sh, instructions.sh,
# ab_held.sh). Sets HOLDER (end it with `kill -- -$HOLDER`), HELD_SERVER_PID, HELD_URL (the
# server's base URL), HELD_DIR (its scratch dir: whole.json, stream.json, data/), HELD_KEY (a
# project key), NGINX_PID and PROXY_PID (the canned upstream's and nginx as a proxy's masters) and
# the ports P_WHOLE, P_PROXY, P_STREAM and P_PROXY_STREAM. run.sh reads AICLOUD_BIN, LOADGEN and
# SYNC from the environment: export them first.
hold_gateway_bench() {
  local root line
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  setsid env HOLD=1 CASES="$1" "$root/bench/gateway/run.sh" >"$2" 2>&1 &
  HOLDER=$!
  for _ in $(seq 90); do grep -q "server pid" "$2" && break; kill -0 "$HOLDER" 2>/dev/null || break; sleep 1; done
  line=$(grep "server pid" "$2") || { cat "$2" >&2; die "the gateway benchmark did not come up"; }
  HELD_SERVER_PID=$(sed -n 's/.*server pid \([0-9]*\);.*/\1/p' <<<"$line")
  HELD_URL=$(grep -o 'http://127.0.0.1:[0-9]*/v1/chat/completions' "$2" | head -n1)
  HELD_URL=${HELD_URL%/v1/chat/completions}
  HELD_DIR=$(grep -o '/tmp/aicloud-gwbench-[A-Za-z0-9]*' "$2" | head -n1)
  HELD_KEY=$(grep -o 'sk-proj-[A-Za-z0-9]*' "$2" | head -n1)
  P_WHOLE=$(sed -n 's/.*nginx direct :\([0-9]*\),.*/\1/p' <<<"$line")
  P_PROXY=$(sed -n 's/.*nginx direct :[0-9]*, proxy :\([0-9]*\),.*/\1/p' <<<"$line")
  P_STREAM=$(sed -n 's/.*stream direct :\([0-9]*\),.*/\1/p' <<<"$line")
  P_PROXY_STREAM=$(sed -n 's/.*stream direct :[0-9]*, proxy :\([0-9]*\).*/\1/p' <<<"$line")
  NGINX_PID=$(sed -n 's/.*nginx pid \([0-9]*\),.*/\1/p' <<<"$line")
  PROXY_PID=$(sed -n 's/.*proxy pid \([0-9]*\) .*/\1/p' <<<"$line")
}
