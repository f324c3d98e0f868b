-- wrk script for bench/http/run.sh. Everything comes from the environment so that one script
-- serves every case, and the request is built once (no per-request Lua: wrk's fast path).
--   BENCH_METHOD  GET (default) or POST
--   BENCH_KEY     bearer token for the Authorization header ("" = none, e.g. for nginx)
--   BENCH_BODY    request body (POST), sent as application/json
-- done() prints one machine-readable line that run.sh parses:
--   RESULT requests=N duration_us=N rps=F p50_us=N p99_us=N max_us=N non2xx=N errors=N
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local key = os.getenv("BENCH_KEY") or ""
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
local body = os.getenv("BENCH_BODY") or ""
if body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
