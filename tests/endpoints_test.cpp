// External endpoints (gateway/endpoints.h): the operator registers an OpenAI-compatible upstream
// that aicloud does not run, and tenants use it through the gateway with their own keys, rate
// limits and usage records. The upstream here is a real HTTP server in the test process that
// answers with canned completions and remembers what it was sent. Also: the operator's default
// rate limits (/admin/v1/settings), which apply to every project without its own.
#include <gtest/gtest.h>

#include <strings.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>

#include "http/server.h"
#include "http/stream.h"
#include "support/raw_http.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;

namespace {

class CannedUpstream : public http::Handler {
 public:
  http::Response handle(http::Request& req, const std::string&) override {
    {
      std::lock_guard lk(mu);
      last_auth = std::string(req.field("authorization").value_or(""));
      last_target = std::string(req.target());
      last_body = req.body();
      ++requests;
    }
    http::Response r;
    // A hosted API's own limits: not the tenant's, which are the gateway's. Its own request id
    // is not the request's either.
    r.headers.emplace_back("X-RateLimit-Remaining-Requests", "upstream-7");
    r.headers.emplace_back("X-Request-Id", "upstream-id");
    json in = json::parse(req.body(), nullptr, false);
    if (in.is_object() && in.value("user", "") == "oversize") {  // more than the gateway relays
      bool stream = in.value("stream", false);
      r.content_type = stream ? "text/event-stream" : "application/json";
      r.body = stream ? "data: {\"x\":\"" + std::string(9u << 20, 'x')  // an event that never ends
                      : std::string(65u << 20, ' ');
      return r;
    }
    if (in.is_object() && in.value("user", "") == "paced") {  // a stream the test writes piece by piece
      r.stream = std::make_shared<http::ResponseStream>();
      http::Response h;
      h.content_type = "text/event-stream";
      r.stream->head(std::move(h), event("first-piece"));
      std::lock_guard lk(mu);
      paced = r.stream;
      return r;
    }
    if (in.is_object() && in.value("stream", false)) {
      r.content_type = "text/event-stream";
      r.body =
          "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"partner-echo\",\"choices\":[{\"index\":0,"
          "\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n"
          "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"partner-echo\",\"choices\":[],"
          "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n"
          "data: [DONE]\n\n";
      return r;
    }
    r.body = json{{"id", "c1"}, {"object", "chat.completion"}, {"created", 1}, {"model", "partner-echo"},
                  {"choices", {{{"index", 0}, {"message", {{"role", "assistant"}, {"content", "hi"}}}, {"finish_reason", "stop"}}}},
                  {"usage", {{"prompt_tokens", 7}, {"completion_tokens", 3}, {"total_tokens", 10}}}}
                 .dump();
    return r;
  }
  http::Response protocol_error(unsigned status, const std::string& message) override {
    http::Response r;
    r.status = status;
    r.body = message;
    return r;
  }
  static std::string event(const std::string& content) {
    return "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"partner-echo\",\"choices\":[{\"index\":0,"
           "\"delta\":{\"content\":\"" + content + "\"},\"finish_reason\":null}]}\n\n";
  }
  std::mutex mu;
  std::string last_auth, last_target, last_body;
  int requests = 0;
  std::shared_ptr<http::ResponseStream> paced;  // the last "paced" request's stream
};

json chat() { return {{"model", "partner-echo"}, {"messages", {{{"role", "user"}, {"content", "hello"}}}}}; }

// The canned upstream on a free port, served by its own thread.
struct Upstream {
  CannedUpstream canned;
  http::Server server{[] {
                        http::ServerOptions so;
                        so.port = 0;
                        so.threads = 1;
                        return so;
                      }(),
                      canned};
  std::thread thread{[this] { server.run(); }};
  ~Upstream() {
    server.stop();
    thread.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server.port()) + "/v1"; }
};

// Polls until a chat request gets `want` (the controller publishes endpoints on its next round).
http::ClientResponse chat_until(Api& api, unsigned want) {
  http::ClientResponse r;
  for (auto until = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < until;) {
    r = api.call("POST", "/v1/chat/completions", chat());
    if (r.status == want) break;
    std::this_thread::sleep_for(100ms);
  }
  return r;
}

// A cloud with the canned upstream registered as "partner-echo" for every organization, one
// tenant ("acme"), and the endpoint published (a chat through it has answered).
struct PublishedEndpoint {
  Upstream up;
  ServerProcess srv;
  std::unique_ptr<http::Client> c = srv.client();
  Api op{*c, srv.admin_key(), ""};
  Tenant a;
  Api pa;
  PublishedEndpoint()
      : a((op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201),
           make_tenant(*c, srv.admin_key(), "acme"))),
        pa{*c, a.project_key, ""} {
    op.post("/admin/v1/endpoints", {{"model", "partner-echo"}, {"url", up.url()}, {"region", "eu-west-1"}}, 201);
  }
};

// "Chunks forwarded as they arrive": each piece of an upstream's stream reaches the client while
// the upstream is still producing, not when the stream ends. (The gateway hands on what one
// upstream read brought once that read is through: the pool's on_read_end.)
TEST(Endpoints, AStreamsPiecesReachTheClientAsTheUpstreamSendsThem) {
  PublishedEndpoint e;
  auto& [up, srv, c, op, a, pa] = e;
  ASSERT_EQ(chat_until(pa, 200).status, 200u);

  json body = chat();
  body["stream"] = true;
  body["user"] = "paced";
  std::string payload = body.dump();
  RawConn conn(srv.url());
  ASSERT_TRUE(conn.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + a.project_key +
                        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(payload.size()) +
                        "\r\n\r\n" + payload));
  ASSERT_TRUE(conn.read_until("first-piece", 10s)) << "the first piece waits for the stream's end";
  std::shared_ptr<http::ResponseStream> out;
  {
    std::lock_guard lk(up.canned.mu);
    out = up.canned.paced;
  }
  ASSERT_TRUE(out);
  out->write(CannedUpstream::event("second-piece"));
  ASSERT_TRUE(conn.read_until("second-piece", 10s)) << "a later piece waits for the stream's end";
  EXPECT_FALSE(conn.read_until("[DONE]", 200ms)) << "the end came before the upstream's";
  out->write("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
             "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\ndata: [DONE]\n\n",
             true);
  RawResponse r = conn.read_response(10s);
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_NE(r.body.find("second-piece"), std::string::npos) << r.body;
  EXPECT_EQ(r.body.find("\"usage\""), std::string::npos) << "the usage chunk was the gateway's to ask for: " << r.body;
  ASSERT_GE(r.body.size(), 14u);
  EXPECT_EQ(r.body.substr(r.body.size() - 14), "data: [DONE]\n\n");
}

TEST(Endpoints, OperatorRegistersAnUpstreamTenantsUseItMeteredAndScoped) {
  Upstream up;
  CannedUpstream& canned = up.canned;

  ServerProcess srv;
  auto c = srv.client();
  Api op{*c, srv.admin_key(), ""};
  op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
  Tenant a = make_tenant(*c, srv.admin_key(), "acme");
  Tenant b = make_tenant(*c, srv.admin_key(), "beta");
  std::string url = up.url();

  // Bad input, and nobody but the operator.
  auto bad = op.call("POST", "/admin/v1/endpoints", {{"model", "partner-echo"}, {"url", "ftp://x"}, {"region", "eu-west-1"}});
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(json::parse(bad.body)["error"]["param"], "url") << bad.body;
  bad = op.call("POST", "/admin/v1/endpoints", {{"model", "partner-echo"}, {"url", url}, {"region", "mars-1"}});
  EXPECT_EQ(json::parse(bad.body)["error"]["param"], "region") << bad.body;
  Api tenant{*c, a.admin_key, ""};
  EXPECT_EQ(tenant.call("POST", "/admin/v1/endpoints", {{"model", "partner-echo"}, {"url", url}, {"region", "eu-west-1"}}).status,
            403u);

  json ep = op.post("/admin/v1/endpoints",
                    {{"model", "partner-echo"}, {"url", url}, {"region", "eu-west-1"}, {"api_key", "sk-upstream-secret"},
                     {"organization_id", a.org_id}},
                    201);
  EXPECT_EQ(ep["api_key_set"], true);
  EXPECT_FALSE(ep.contains("api_key")) << "the upstream's key is never shown";
  EXPECT_EQ(op.get("/admin/v1/endpoints")["data"].size(), 1u);

  // Published on the controller's next round.
  Api pa{*c, a.project_key, ""};
  http::ClientResponse r = chat_until(pa, 200);
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(json::parse(r.body)["choices"][0]["message"]["content"], "hi");
  EXPECT_FALSE(r.header("x-ratelimit-remaining-requests").empty()) << "every answer carries the rate limits";
  auto count = [](const http::ClientResponse& resp, std::string_view name) {
    return std::count_if(resp.headers.begin(), resp.headers.end(), [&](const auto& f) {
      return f.first.size() == name.size() && strncasecmp(f.first.data(), name.data(), name.size()) == 0;
    });
  };
  EXPECT_EQ(count(r, "x-ratelimit-remaining-requests"), 1) << "the upstream's own limits are not passed on";
  EXPECT_NE(r.header("x-ratelimit-remaining-requests"), "upstream-7");
  EXPECT_FALSE(r.header("x-request-id").empty());
  EXPECT_EQ(count(r, "x-request-id"), 1) << "the upstream's own request id is not passed on";
  EXPECT_NE(r.header("x-request-id"), "upstream-id");
  {
    std::lock_guard lk(canned.mu);
    EXPECT_EQ(canned.last_auth, "Bearer sk-upstream-secret");
    EXPECT_EQ(canned.last_target, "/v1/chat/completions");
  }
  // Streamed, with the usage chunk passed on when asked for.
  // (Written by hand, spaced and ordered unlike a re-serialisation, to see it arrive unchanged.)
  const std::string s =
      R"({ "stream_options": {"include_usage": true}, "model": "partner-echo", "stream": true,)"
      R"( "messages": [ {"role": "user", "content": "hello"} ] })";
  auto st = c->request("POST", "/v1/chat/completions", s,
                       {{"Authorization", "Bearer " + a.project_key}, {"Content-Type", "application/json"}});
  ASSERT_EQ(st.status, 200u) << st.body;
  EXPECT_FALSE(st.header("x-ratelimit-remaining-tokens").empty()) << "a stream's head carries them too";
  EXPECT_EQ(count(st, "x-ratelimit-remaining-requests"), 1);
  EXPECT_NE(st.header("x-ratelimit-remaining-requests"), "upstream-7");
  EXPECT_EQ(count(st, "x-request-id"), 1);
  EXPECT_NE(st.header("x-request-id"), "upstream-id");
  EXPECT_EQ(st.header("content-type"), "text/event-stream");
  EXPECT_NE(st.body.find("\"prompt_tokens\":7"), std::string::npos) << st.body;
  EXPECT_NE(st.body.find("data: [DONE]"), std::string::npos) << st.body;
  {
    std::lock_guard lk(canned.mu);
    EXPECT_EQ(canned.last_body, s) << "a stream that asks for usage is forwarded as sent";
  }
  // Not asked for: the gateway asks on the client's behalf (to meter it) and hides that chunk.
  json s2 = chat();
  s2["stream"] = true;
  auto st2 = pa.call("POST", "/v1/chat/completions", s2);
  ASSERT_EQ(st2.status, 200u) << st2.body;
  EXPECT_EQ(st2.body.find("\"usage\""), std::string::npos) << st2.body;
  EXPECT_NE(st2.body.find("data: [DONE]"), std::string::npos) << st2.body;
  {
    std::lock_guard lk(canned.mu);
    json sent = json::parse(canned.last_body);
    EXPECT_EQ(sent["stream_options"]["include_usage"], true) << canned.last_body;
  }
  // The request is added to, not rewritten: the client's text follows the member put first...
  const std::string s3 = R"(  { "model": "partner-echo", "stream": true, "messages": [ {"role": "user", "content": "x"} ] })";
  auto st3 = c->request("POST", "/v1/chat/completions", s3,
                        {{"Authorization", "Bearer " + a.project_key}, {"Content-Type", "application/json"}});
  ASSERT_EQ(st3.status, 200u) << st3.body;
  EXPECT_EQ(st3.body.find("\"usage\""), std::string::npos) << st3.body;
  {
    std::lock_guard lk(canned.mu);
    EXPECT_EQ(canned.last_body, R"(  {"stream_options":{"include_usage":true}, "model": "partner-echo", "stream": true,)"
                                R"( "messages": [ {"role": "user", "content": "x"} ] })");
  }
  // ...and stream_options of the client's without include_usage: true get it set.
  for (json so : {json{{"include_usage", false}}, json::object(), json(nullptr)}) {
    json s4 = chat();
    s4["stream"] = true;
    s4["stream_options"] = so;
    auto st4 = pa.call("POST", "/v1/chat/completions", s4);
    ASSERT_EQ(st4.status, 200u) << st4.body;
    EXPECT_EQ(st4.body.find("\"usage\""), std::string::npos) << st4.body;
    std::lock_guard lk(canned.mu);
    json sent = json::parse(canned.last_body);
    EXPECT_EQ(sent["stream_options"]["include_usage"], true) << canned.last_body;
    EXPECT_EQ(sent["messages"], s4["messages"]) << canned.last_body;
  }
  auto bad_so = pa.call("POST", "/v1/chat/completions", json{{"model", "partner-echo"}, {"stream", true},
                                                             {"messages", chat()["messages"]}, {"stream_options", "usage"}});
  EXPECT_EQ(bad_so.status, 400u) << bad_so.body;
  EXPECT_EQ(json::parse(bad_so.body)["error"]["param"], "stream_options") << bad_so.body;

  // An answer larger than the gateway holds whole, and a stream event that does not end: a 502,
  // and an error event, never a cut answer passed on as complete or memory without bound.
  json big = chat();
  big["user"] = "oversize";
  auto whole_big = pa.call("POST", "/v1/chat/completions", big);
  EXPECT_EQ(whole_big.status, 502u) << whole_big.body.substr(0, 200);
  EXPECT_NE(whole_big.body.find("larger than 64 MiB"), std::string::npos) << whole_big.body.substr(0, 200);
  big["stream"] = true;
  auto stream_big = pa.call("POST", "/v1/chat/completions", big);
  EXPECT_EQ(stream_big.status, 200u);
  EXPECT_LT(stream_big.body.size(), 4096u) << "the unfinished event is not relayed";
  EXPECT_NE(stream_big.body.find("data: {\"error\""), std::string::npos) << stream_big.body;
  EXPECT_NE(stream_big.body.find("larger than 8 MiB"), std::string::npos) << stream_big.body;
  EXPECT_EQ(stream_big.body.find("[DONE]"), std::string::npos) << stream_big.body;

  // Listed for A; invisible to B.
  json models = pa.get("/v1/models");
  bool listed = false;
  for (const auto& m : models["data"]) listed |= m["id"] == "partner-echo";
  EXPECT_TRUE(listed) << models.dump();
  EXPECT_EQ(pa.get("/v1/models/partner-echo")["owned_by"], a.org_id);
  Api pb{*c, b.project_key, ""};
  json models_b = pb.get("/v1/models");  // held: a range-for over a temporary's member dangles
  for (const auto& m : models_b["data"]) EXPECT_NE(m["id"], "partner-echo");
  auto rb = pb.call("POST", "/v1/chat/completions", chat());
  EXPECT_EQ(rb.status, 404u);
  EXPECT_EQ(json::parse(rb.body)["error"]["code"], "model_not_found");
  pb.get("/v1/models/partner-echo", 404);

  // Metered as A's: the upstream's reported tokens, with the endpoint as the deployment.
  int64_t day = int64_t(time(nullptr)) / 86400 * 86400;
  json u = tenant.get("/v1/organization/usage/completions?start_time=" + std::to_string(day) + "&limit=1");
  ASSERT_EQ(u["data"][0]["results"].size(), 1u) << u.dump();
  // Seven answered requests (one whole, six streamed), each reported as 7 in and 3 out, and the
  // two refused as too large (each a record too, with no tokens).
  EXPECT_EQ(u["data"][0]["results"][0]["num_model_requests"], 9);
  EXPECT_EQ(u["data"][0]["results"][0]["input_tokens"], 49);
  EXPECT_EQ(u["data"][0]["results"][0]["output_tokens"], 21);

  // Deleted: gone from the gateway within a round or two.
  op.del("/admin/v1/endpoints/" + ep["id"].get<std::string>());
  r = chat_until(pa, 404);
  EXPECT_EQ(r.status, 404u) << r.body;
  op.get("/admin/v1/endpoints/" + ep["id"].get<std::string>(), 404);
}

TEST(Endpoints, OperatorDefaultRateLimitsApplyToProjectsWithoutTheirOwn) {
  PublishedEndpoint e;
  auto& [up, srv, c, op, a, pa] = e;
  ASSERT_EQ(chat_until(pa, 200).status, 200u);

  // Bad input names the field; nothing changes.
  auto bad = op.call("POST", "/admin/v1/settings", {{"default_rate_limits", {{"max_requests_per_1_minute", 0}}}});
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(json::parse(bad.body)["error"]["param"], "default_rate_limits.max_requests_per_1_minute") << bad.body;
  bad = op.call("POST", "/admin/v1/settings", {{"default_rate_limits", {{"max_requests_per_minute", 5}}}});
  EXPECT_EQ(bad.status, 400u) << bad.body;
  EXPECT_EQ(op.get("/admin/v1/settings")["default_rate_limits"]["max_requests_per_1_minute"], 10000);

  json s = op.post("/admin/v1/settings", {{"default_rate_limits", {{"max_requests_per_1_minute", 3}}}});
  EXPECT_EQ(s["default_rate_limits"]["max_requests_per_1_minute"], 3);
  EXPECT_EQ(s["default_rate_limits"]["max_tokens_per_1_minute"], 10'000'000) << "the other default is kept";
  // The project's view shows the operator's default ...
  Api admin{*c, a.admin_key, ""};
  json list = admin.get("/v1/organization/projects/" + a.project_id + "/rate_limits");
  ASSERT_EQ(list["data"].size(), 1u) << list.dump();
  EXPECT_EQ(list["data"][0]["id"], "rl-partner-echo");
  EXPECT_EQ(list["data"][0]["max_requests_per_1_minute"], 3);
  // ... and the gateway enforces it (within its refresh interval): a full bucket of 3, then 429.
  std::this_thread::sleep_for(300ms);
  int ok = 0;
  http::ClientResponse r;
  for (int i = 0; i < 10 && (r = pa.call("POST", "/v1/chat/completions", chat())).status == 200; ++i) ++ok;
  EXPECT_EQ(r.status, 429u) << r.body;
  EXPECT_LE(ok, 3);
  EXPECT_EQ(r.header("x-ratelimit-limit-requests"), "3");
  // A project's own limit still wins over the default.
  admin.post("/v1/organization/projects/" + a.project_id + "/rate_limits/rl-partner-echo",
             {{"max_requests_per_1_minute", 1000}});
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(pa.call("POST", "/v1/chat/completions", chat()).status, 200u);
}

}  // namespace
