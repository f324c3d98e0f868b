// What a real server process does with bad input: malformed or mistyped JSON, unknown and
// missing fields, invalid UTF-8, the wrong content type, oversized bodies and headers, broken
// request lines, clients too slow to finish a request, bad paging parameters, unknown URLs and
// methods, and Idempotency-Key replays. Each answer is the right status with the OpenAI error
// shape (or, for protocol abuse, a closed connection), and after each case the server still
// answers /healthz (checked in TearDown). Protocol-level cases use raw sockets.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <tuple>

#include "support/raw_http.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;

namespace {

// {"error": {"message", "type", "param", "code"}} with the given status (and param/code if given;
// param "null" means it must be null).
::testing::AssertionResult is_error(unsigned got_status, const std::string& body, unsigned status,
                                    const std::string& param = "", const std::string& code = "") {
  if (got_status != status) {
    return ::testing::AssertionFailure() << "want HTTP " << status << ", got " << got_status << ": " << body;
  }
  json j = json::parse(body, nullptr, false);
  if (!j.is_object() || j.size() != 1 || !j.contains("error") || !j["error"].is_object()) {
    return ::testing::AssertionFailure() << "not an OpenAI error body: " << body;
  }
  const json& e = j["error"];
  bool shape = e.size() == 4 && e.contains("message") && e["message"].is_string() &&
               !e["message"].get<std::string>().empty() && e.contains("type") && e["type"].is_string() &&
               e.contains("param") && (e["param"].is_null() || e["param"].is_string()) && e.contains("code") &&
               (e["code"].is_null() || e["code"].is_string());
  if (!shape) return ::testing::AssertionFailure() << "error body is not {message,type,param,code}: " << body;
  if (param == "null" && !e["param"].is_null()) return ::testing::AssertionFailure() << "want param null: " << body;
  if (!param.empty() && param != "null" && e["param"] != param) {
    return ::testing::AssertionFailure() << "want param '" << param << "': " << body;
  }
  if (!code.empty() && e["code"] != code) return ::testing::AssertionFailure() << "want code '" << code << "': " << body;
  return ::testing::AssertionSuccess();
}
::testing::AssertionResult is_error(const http::ClientResponse& r, unsigned status, const std::string& param = "",
                                    const std::string& code = "") {
  return is_error(r.status, r.body, status, param, code);
}

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }

  void start(std::vector<std::string> args) {
    srv = std::make_unique<ServerProcess>(std::move(args));
    c = srv->client();
    t = make_tenant(*c, srv->admin_key(), "acme");
  }

  // Whatever a case did, the server still serves a new client.
  void TearDown() override {
    if (!srv || !srv->running()) return;
    try {
      http::Client fresh(srv->url(), 5s);
      EXPECT_EQ(fresh.request("GET", "/healthz").status, 200u) << "the server stopped answering /healthz";
    } catch (const std::exception& e) {
      ADD_FAILURE() << "the server stopped answering /healthz: " << e.what() << "\n" << srv->log();
    }
  }

  // POST with a raw body string (and Content-Type application/json unless given).
  http::ClientResponse post_raw(const std::string& path, const std::string& body,
                                std::vector<std::pair<std::string, std::string>> headers = {},
                                const std::string& key = "") {
    headers.emplace_back("Authorization", "Bearer " + (key.empty() ? t.admin_key : key));
    bool has_ct = false;
    for (const auto& [k, v] : headers) has_ct = has_ct || strcasecmp(k.c_str(), "content-type") == 0;
    if (!has_ct) headers.emplace_back("Content-Type", "application/json");
    return c->request("POST", path, body, headers);
  }

  size_t project_count() {
    return Api{*c, t.admin_key, ""}.get("/v1/organization/projects?limit=100&include_archived=true")["data"].size();
  }

  std::unique_ptr<ServerProcess> srv;
  std::unique_ptr<http::Client> c;
  Tenant t;
};

// ------------------------------------------------------------------------------------------
// JSON bodies.

TEST_F(BadInput, MalformedJsonIs400) {
  size_t before = project_count();
  for (const std::string body : {"{", "}", "{\"name\":}", "{\"name\":\"x\",}", "{\"name\" \"x\"}", "{'name':'x'}",
                                 "nul", "{\"name\":\"x\"} {}", "{\"name\":\"x\"} trailing", "{\"name\":NaN}",
                                 "{\"name\":\"unterminated}", "{\"name\":\"bad \\q escape\"}", "\x01",
                                 "{\"a\":1e400}", "{\"name\":\"tab\tinside\"}", "[1,2"}) {
    SCOPED_TRACE(body);
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", body), 400, "", "invalid_json"));
  }
  // Public routes parse their body too.
  Api anon{*c, "", ""};
  EXPECT_TRUE(is_error(c->request("POST", "/v1/auth/login", "{\"email\":", {{"Content-Type", "application/json"}}), 400,
                       "", "invalid_json"));
  EXPECT_EQ(project_count(), before);
}

TEST_F(BadInput, BodyMustBeAnObject) {
  for (const std::string body : {"[]", "[{\"name\":\"x\"}]", "\"name\"", "42", "true", "null"}) {
    SCOPED_TRACE(body);
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", body), 400));
  }
}

TEST_F(BadInput, DeeplyNestedJsonIs400) {
  for (size_t depth : {200ul, 100'000ul, 1'000'000ul}) {
    SCOPED_TRACE(depth);
    std::string arrays = std::string(depth, '[') + std::string(depth, ']');
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", arrays), 400));
    std::string objects;
    for (size_t i = 0; i < depth; ++i) objects += "{\"a\":";
    objects += "1" + std::string(depth, '}');
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", "{\"name\":" + objects + "}"), 400));
    // Unauthenticated, on the login route: the parse must not be a way to crash the server.
    EXPECT_TRUE(is_error(c->request("POST", "/v1/auth/login", arrays, {{"Content-Type", "application/json"}}), 400));
  }
}

TEST_F(BadInput, WrongTypeIs400NamingTheField) {
  for (const json& name : {json(5), json(true), json::array({"x"}), json{{"a", 1}}, json(1.5)}) {
    SCOPED_TRACE(name.dump());
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", json{{"name", name}}.dump()), 400, "name", "invalid_value"));
  }
  std::string op = srv->admin_key();
  for (const auto& [body, field] : std::vector<std::pair<std::string, std::string>>{
           {R"({"signup_enabled":"yes"})", "signup_enabled"},
           {R"({"signup_enabled":1})", "signup_enabled"},
           {R"({"session_ttl_seconds":"3600"})", "session_ttl_seconds"},
           {R"({"session_ttl_seconds":3600.5})", "session_ttl_seconds"},
           {R"({"session_ttl_seconds":1e30})", "session_ttl_seconds"},
           {R"({"session_ttl_seconds":18446744073709551615})", "session_ttl_seconds"},
           {R"({"session_ttl_seconds":-9223372036854775808})", "session_ttl_seconds"},
           {R"({"session_ttl_seconds":59})", "session_ttl_seconds"},
       }) {
    SCOPED_TRACE(body);
    EXPECT_TRUE(is_error(post_raw("/admin/v1/settings", body, {}, op), 400, field));
  }
  EXPECT_TRUE(is_error(post_raw("/v1/organization/users", R"({"email":"x@example.com","role":"superuser","password":"long enough pw"})"),
                       400, "role"));
  EXPECT_TRUE(is_error(post_raw("/v1/organization/users", R"({"email":["x@example.com"]})"), 400, "email"));
  // Settings did not change.
  json s = Api{*c, op, ""}.get("/admin/v1/settings");
  EXPECT_EQ(s["signup_enabled"], false);
  EXPECT_EQ(s["session_ttl_seconds"], 86400);
}

TEST_F(BadInput, MissingRequiredFieldIs400NamingIt) {
  std::string op = srv->admin_key();
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", "{}"), 400, "name", "missing_required_parameter"));
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", ""), 400, "name", "missing_required_parameter"));
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", R"({"name":null})"), 400, "name"));
  EXPECT_TRUE(is_error(post_raw("/admin/v1/organizations", "{}", {}, op), 400, "name", "missing_required_parameter"));
  EXPECT_TRUE(is_error(post_raw("/admin/v1/regions", R"({"id":"eu-west-1"})", {}, op), 400, "jurisdiction",
                       "missing_required_parameter"));
  EXPECT_TRUE(is_error(post_raw("/v1/organization/users/" + std::string("user-nonexistent000000000000"), "{}"), 404));
  EXPECT_TRUE(is_error(c->request("POST", "/v1/auth/login", R"({"email":"a@example.com"})",
                                  {{"Content-Type", "application/json"}}),
                       400, "password", "missing_required_parameter"));
}

TEST_F(BadInput, UnknownFieldIs400NamingItAndChangesNothing) {
  size_t before = project_count();
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", R"({"name":"x","nmae":"y"})"), 400, "nmae",
                       "unknown_parameter"));
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", R"({"name":"x","org_id":"org-other"})"), 400, "org_id",
                       "unknown_parameter"));
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects/" + t.project_id, R"({"status":"archived"})"), 400, "status",
                       "unknown_parameter"));
  EXPECT_TRUE(is_error(post_raw("/admin/v1/settings", R"({"signup_enabled":true,"debug":true})", {}, srv->admin_key()),
                       400, "debug"));
  EXPECT_EQ(project_count(), before);
  EXPECT_EQ(Api({*c, srv->admin_key(), ""}).get("/admin/v1/settings")["signup_enabled"], false);
  EXPECT_EQ(Api({*c, t.admin_key, ""}).get("/v1/organization/projects/" + t.project_id)["status"], "active");
}

TEST_F(BadInput, InvalidUtf8Is400) {
  size_t before = project_count();
  for (const std::string& bad : {std::string("\xff"), std::string("\xc0\xaf"),  // overlong '/'
                                std::string("\xe2\x82"),                        // truncated
                                std::string("\xed\xa0\x80"),                    // a surrogate, UTF-8 encoded
                                std::string("\xf4\x90\x80\x80"),                // beyond U+10FFFF
                                std::string("ok\x80")}) {
    SCOPED_TRACE(::testing::PrintToString(bad));
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", "{\"name\":\"" + bad + "\"}"), 400));
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", "{\"name\":\"x\",\"" + bad + "\":1}"), 400));
  }
  for (const std::string esc : {"\\ud800", "\\udc00x", "\\ud800\\u0041"}) {  // lone surrogates as escapes
    SCOPED_TRACE(esc);
    EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", "{\"name\":\"" + esc + "\"}"), 400));
  }
  EXPECT_EQ(project_count(), before);
  // Valid UTF-8 and escapes round-trip.
  auto ok = post_raw("/v1/organization/projects", "{\"name\":\"caf\xc3\xa9 \\u00e9 \xf0\x9f\x98\x80 \\ud83d\\ude00\"}");
  ASSERT_EQ(ok.status, 201u) << ok.body;
  EXPECT_EQ(json::parse(ok.body)["name"], "caf\xc3\xa9 \xc3\xa9 \xf0\x9f\x98\x80 \xf0\x9f\x98\x80");
}

TEST_F(BadInput, NonJsonContentTypeIs415) {
  size_t before = project_count();
  for (const std::string ct : {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                               "application/jsonp", "application/xml", "json", ""}) {
    SCOPED_TRACE(ct);
    auto r = post_raw("/v1/organization/projects", R"({"name":"x"})", {{"Content-Type", ct}});
    EXPECT_TRUE(is_error(r, 415, "", "unsupported_media_type"));
    // A browser form can post text/plain to a public route without a preflight: login too.
    EXPECT_TRUE(is_error(c->request("POST", "/v1/auth/login", R"({"email":"a@example.com","password":"x"})",
                                    {{"Content-Type", ct}}),
                         415, "", "unsupported_media_type"));
  }
  EXPECT_EQ(project_count(), before);
  // application/json in any case, with parameters, is JSON.
  for (const std::string ct : {"application/json", "application/json; charset=utf-8", "Application/JSON",
                               "application/json ;charset=UTF-8"}) {
    SCOPED_TRACE(ct);
    EXPECT_EQ(post_raw("/v1/organization/projects", R"({"name":"typed"})", {{"Content-Type", ct}}).status, 201u);
  }
}

// ------------------------------------------------------------------------------------------
// Protocol abuse, on raw sockets.

// Any answer to protocol abuse is an error status with the OpenAI shape, or a closed connection;
// never a hang.
void expect_refused(RawConn& conn, unsigned status, const std::string& what) {
  RawResponse r = conn.read_response(10s);
  EXPECT_FALSE(r.timed_out) << what << ": the server neither answered nor closed";
  if (r.got_response) {
    EXPECT_TRUE(is_error(r.status, r.body, status)) << what;
  }
}

TEST_F(BadInput, OversizedBodyIs413OrClosed) {
  const size_t limit = 16 * 1024 * 1024;
  const size_t before = project_count();
  {  // Declared too large: refused before the body is sent.
    RawConn conn(srv->url());
    conn.send("POST /v1/organization/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.admin_key +
              "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(limit + 1) + "\r\n\r\n");
    RawResponse r = conn.read_response(10s);
    ASSERT_TRUE(r.got_response) << "a declared Content-Length over the limit gets an answer at once";
    EXPECT_TRUE(is_error(r.status, r.body, 413, "", "request_too_large"));
  }
  {  // Chunked, so the size is only known as it arrives.
    RawConn conn(srv->url());
    conn.send("POST /v1/organization/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.admin_key +
              "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    std::string chunk(1 << 20, 'a');
    char size_line[32];
    snprintf(size_line, sizeof size_line, "%zx\r\n", chunk.size());
    for (size_t sent = 0; sent <= limit; sent += chunk.size()) {
      if (!conn.send(size_line + chunk + "\r\n")) break;
    }
    conn.send("0\r\n\r\n");
    expect_refused(conn, 413, "chunked body over the limit");
  }
  EXPECT_EQ(project_count(), before);
  // Just under the limit is read and judged on its content.
  std::string big = "{\"name\":\"" + std::string(limit - 64, 'n') + "\"}";
  EXPECT_TRUE(is_error(post_raw("/v1/organization/projects", big), 400, "name"));
}

TEST_F(BadInput, HugeHeadersAre431OrClosed) {
  {
    RawConn conn(srv->url());
    std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 5000; ++i) req += "X-Filler-" + std::to_string(i) + ": abcdefgh\r\n";
    conn.send(req + "\r\n");
    expect_refused(conn, 431, "5000 headers");
  }
  {
    RawConn conn(srv->url());
    conn.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(256 * 1024, 'b') + "\r\n\r\n");
    expect_refused(conn, 431, "a 256 KiB header");
  }
  {
    RawConn conn(srv->url());
    conn.send("GET /" + std::string(64 * 1024, 'p') + " HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_refused(conn, 431, "a 64 KiB request target");
  }
  {  // Under the limit is fine.
    RawConn conn(srv->url());
    conn.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8 * 1024, 'b') + "\r\n\r\n");
    RawResponse r = conn.read_response(5s);
    ASSERT_TRUE(r.got_response);
    EXPECT_EQ(r.status, 200u);
  }
}

TEST_F(BadInput, MalformedRequestIs400OrClosed) {
  const std::vector<std::string> bad = {
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET /healthz\r\n\r\n",
      "GET /healthz HTTP/1.1 extra\r\n\r\n",
      "GET /healthz HTTP/x.y\r\n\r\n",
      "GET /healthz FTP/1.1\r\n\r\n",
      " GET /healthz HTTP/1.1\r\n\r\n",
      "G(T /healthz HTTP/1.1\r\n\r\n",
      std::string("GET /he\0lthz HTTP/1.1\r\nHost: x\r\n\r\n", sizeof("GET /he\0lthz HTTP/1.1\r\nHost: x\r\n\r\n") - 1),
      std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 15),  // a TLS ClientHello on the plain-text port
      "GET /healthz HTTP/1.1\r\nNoColonHere\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x01z\r\n\r\n",
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
      "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
      "GET http://example.com/healthz HTTP/1.1\r\nHost: x\r\n\r\n",  // absolute form: not for this server
      "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /v1/organization/projects/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /v1/organization/projects/%00 HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /v1/organization/projects?limit=%G1 HTTP/1.1\r\nHost: x\r\n\r\n",
  };
  for (const auto& req : bad) {
    SCOPED_TRACE(::testing::PrintToString(req));
    RawConn conn(srv->url());
    conn.send(req);
    expect_refused(conn, 400, "malformed request");
  }
}

// A client that sends its request a byte at a time is cut off by the header timeout (counted
// from its first byte, not reset by each byte), and meanwhile others are served.
TEST_F(BadInput, SlowClientIsCutOffByTheHeaderTimeout) {
  srv->stop_graceful();
  start({"--header-timeout-ms", "400", "--idle-timeout-ms", "1000"});
  const std::string req = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slowloris\r\n\r\n";
  RawConn slow(srv->url());
  auto t0 = std::chrono::steady_clock::now();
  size_t sent = 0;
  bool closed = false;
  while (sent < req.size() && !closed) {
    slow.send(req.substr(sent++, 1));
    closed = slow.wait_closed(100ms);
    // Others are served while the slow client holds its connection.
    if (sent == 2) {
      EXPECT_EQ(http::Client(srv->url(), 2s).request("GET", "/healthz").status, 200u);
    }
  }
  auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(closed) << "the server waited for all " << req.size() << " bytes";
  EXPECT_LT(sent, req.size());
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 3s);
}

TEST_F(BadInput, IdleConnectionsAreClosed) {
  srv->stop_graceful();
  start({"--header-timeout-ms", "400", "--idle-timeout-ms", "500"});
  {  // A connection that never sends anything.
    RawConn conn(srv->url());
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(conn.wait_closed(5s));
    auto elapsed = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(elapsed, 400ms);
    EXPECT_LT(elapsed, 3s);
  }
  {  // A keep-alive connection after its request.
    RawConn conn(srv->url());
    conn.send(raw_request("GET", "/healthz"));
    RawResponse r = conn.read_response(5s);
    ASSERT_TRUE(r.got_response);
    EXPECT_EQ(r.status, 200u);
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(conn.wait_closed(5s));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  }
  {  // Requests that come within the idle timeout of the last answer keep the connection open,
     // however long it lives (the deadline moves with each wait); it closes a timeout after the
     // last answer, not after the first wait's.
    RawConn conn(srv->url());
    auto last = std::chrono::steady_clock::now();
    for (int i = 0; i < 8; ++i) {  // 1.6 s in all, over three idle timeouts (each gap 300 ms short of one)
      std::this_thread::sleep_for(200ms);
      ASSERT_TRUE(conn.send(raw_request("GET", "/healthz"))) << "request " << i;
      RawResponse r = conn.read_response(5s);
      ASSERT_TRUE(r.got_response) << "request " << i << " found the connection closed";
      last = std::chrono::steady_clock::now();
    }
    EXPECT_TRUE(conn.wait_closed(5s));
    auto idle = std::chrono::steady_clock::now() - last;
    EXPECT_GE(idle, 450ms);
    EXPECT_LT(idle, 3s);
  }
  {  // Headers complete, then nothing: the body never comes. Cut off by the header/body timeouts
     // at the latest; here we only require that the server keeps serving others meanwhile.
    RawConn conn(srv->url());
    conn.send("POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{");
    EXPECT_EQ(http::Client(srv->url(), 2s).request("GET", "/healthz").status, 200u);
  }
}

// ------------------------------------------------------------------------------------------
// URLs, methods, paging.

TEST_F(BadInput, BadLimitIs400NamingLimit) {
  Api op{*c, srv->admin_key(), t.org_id};
  const std::vector<std::string> lists = {
      "/v1/organization/projects", "/v1/organization/users", "/v1/organization/audit_logs",
      "/v1/organization/admin_api_keys", "/v1/organization/projects/" + t.project_id + "/api_keys",
      "/admin/v1/organizations", "/admin/v1/audit_logs", "/admin/v1/regions", "/admin/v1/zones",
      "/admin/v1/capacity_providers", "/admin/v1/join_tokens", "/admin/v1/nodes"};
  for (const auto& path : lists) {
    for (const std::string v : {"0", "101", "abc", "-1", "1.5", "", "%205", "5%20", "99999", "1e1", "0x10",
                                "18446744073709551617", "%00"}) {
      SCOPED_TRACE(path + "?limit=" + v);
      EXPECT_TRUE(is_error(op.call("GET", path + "?limit=" + v), 400, "limit", "invalid_value"));
    }
    SCOPED_TRACE(path);
    auto one = op.call("GET", path + "?limit=1");
    ASSERT_EQ(one.status, 200u) << one.body;
    EXPECT_LE(json::parse(one.body)["data"].size(), 1u);
    EXPECT_EQ(op.call("GET", path + "?limit=100").status, 200u);
  }
  EXPECT_TRUE(is_error(op.call("GET", "/v1/organization/audit_logs?after=bogus"), 400, "after"));
  EXPECT_TRUE(is_error(op.call("GET", "/v1/organization/audit_logs?effective_at[gte]=yesterday"), 400, "effective_at[gte]"));
}

TEST_F(BadInput, UnknownUrlIs404) {
  Api admin{*c, t.admin_key, ""}, anon{*c, "", ""};
  for (const std::string& path : std::vector<std::string>{"/", "/v2/models", "/v1/organization/projectz", "/v1/organization/projects/a/b/c/d",
                                 "/healthz/extra", "/admin/v1", "/v1/organization/projects/" + t.project_id + "/nothing",
                                 "/../etc/passwd", "/v1/%2e%2e/admin/v1/organizations"}) {
    for (Api* api : {&admin, &anon}) {
      SCOPED_TRACE(path);
      EXPECT_TRUE(is_error(api->call("GET", path), 404, "null", "unknown_url"));
      EXPECT_TRUE(is_error(api->call("POST", path, json::object()), 404, "null", "unknown_url"));
    }
  }
}

TEST_F(BadInput, WrongMethodIs405WithAllow) {
  Api admin{*c, t.admin_key, ""};
  const std::vector<std::tuple<std::string, std::string, std::set<std::string>>> cases = {
      {"PUT", "/v1/organization/projects", {"GET", "POST"}},
      {"DELETE", "/v1/organization/projects", {"GET", "POST"}},
      {"PATCH", "/v1/organization/projects/" + t.project_id, {"GET", "POST"}},
      {"DELETE", "/healthz", {"GET"}},
      {"POST", "/metrics", {"GET"}},
      {"GET", "/v1/auth/login", {"POST"}},
      {"POST", "/admin/v1/audit_logs/verify", {"GET"}},
      {"PUT", "/v1/organization/users/user-x", {"GET", "POST", "DELETE"}},
      {"BREW", "/healthz", {"GET"}},
  };
  for (const auto& [method, path, allowed] : cases) {
    SCOPED_TRACE(method + " " + path);
    auto r = admin.call(method, path, method == "GET" ? json(nullptr) : json::object());
    EXPECT_TRUE(is_error(r, 405, "", "method_not_allowed"));
    std::set<std::string> got;
    std::string allow = r.header("allow");
    for (size_t i = 0; i <= allow.size();) {
      size_t j = allow.find(',', i);
      if (j == std::string::npos) j = allow.size();
      std::string m = allow.substr(i, j - i);
      while (!m.empty() && m.front() == ' ') m.erase(0, 1);
      if (!m.empty()) got.insert(m);
      i = j + 1;
    }
    EXPECT_EQ(got, allowed) << "Allow: " << allow;
  }
}

// ------------------------------------------------------------------------------------------
// Idempotency-Key.

TEST_F(BadInput, IdempotencyKeyReplaysTheFirstResult) {
  Api admin{*c, t.admin_key, ""};
  size_t before = project_count();
  auto first = admin.call("POST", "/v1/organization/projects", {{"name", "once"}}, {{"Idempotency-Key", "create-once-1"}});
  ASSERT_EQ(first.status, 201u) << first.body;
  EXPECT_EQ(first.header("idempotent-replayed"), "");
  auto again = admin.call("POST", "/v1/organization/projects", {{"name", "once"}}, {{"Idempotency-Key", "create-once-1"}});
  EXPECT_EQ(again.status, 201u);
  EXPECT_EQ(again.header("idempotent-replayed"), "true");
  EXPECT_EQ(json::parse(again.body)["id"], json::parse(first.body)["id"]);
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(project_count(), before + 1);

  // Same key, another body: a conflict, and nothing is created.
  auto other = admin.call("POST", "/v1/organization/projects", {{"name", "twice"}}, {{"Idempotency-Key", "create-once-1"}});
  EXPECT_TRUE(is_error(other, 409, "", "idempotency_key_reused"));
  // Same key and body on another path: also a different request.
  auto elsewhere = admin.call("POST", "/v1/organization/projects/" + t.project_id, {{"name", "once"}},
                              {{"Idempotency-Key", "create-once-1"}});
  EXPECT_TRUE(is_error(elsewhere, 409, "", "idempotency_key_reused"));
  EXPECT_EQ(project_count(), before + 1);

  // Keys are per credential: another caller's same key is its own request.
  Api op{*c, srv->admin_key(), t.org_id};
  auto theirs = op.call("POST", "/v1/organization/projects", {{"name", "once"}}, {{"Idempotency-Key", "create-once-1"}});
  EXPECT_EQ(theirs.status, 201u);
  EXPECT_EQ(theirs.header("idempotent-replayed"), "");
  EXPECT_NE(json::parse(theirs.body)["id"], json::parse(first.body)["id"]);

  // A new key is a new request.
  auto fresh = admin.call("POST", "/v1/organization/projects", {{"name", "once"}}, {{"Idempotency-Key", "create-once-2"}});
  EXPECT_EQ(fresh.status, 201u);
  EXPECT_NE(json::parse(fresh.body)["id"], json::parse(first.body)["id"]);

  // An over-long key is refused.
  EXPECT_TRUE(is_error(admin.call("POST", "/v1/organization/projects", {{"name", "long"}},
                                  {{"Idempotency-Key", std::string(256, 'k')}}),
                       400, "Idempotency-Key"));
  EXPECT_EQ(project_count(), before + 3);
}

// The same key sent by several clients at once still creates exactly one object.
TEST_F(BadInput, ConcurrentIdempotentRetriesCreateOneObject) {
  size_t before = project_count();
  constexpr int kThreads = 8;
  std::vector<std::string> ids(kThreads);
  std::vector<unsigned> statuses(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto client = srv->client();
      Api admin{*client, t.admin_key, ""};
      admin.call("GET", "/healthz");  // connected before the race starts
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      auto r = admin.call("POST", "/v1/organization/projects", {{"name", "raced"}}, {{"Idempotency-Key", "race-1"}});
      statuses[size_t(i)] = r.status;
      if (r.status == 201) ids[size_t(i)] = json::parse(r.body)["id"];
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(statuses[size_t(i)], 201u);
    EXPECT_EQ(ids[size_t(i)], ids[0]);
  }
  EXPECT_EQ(project_count(), before + 1);
}

}  // namespace
