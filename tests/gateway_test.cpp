// The model path end to end, with real processes: a server, an agent with declared GPUs, the
// tiny model made by `aicloud models create-tiny`, imported into the catalog, deployed (the
// replica is a service workload the scheduler places and the agent runs: the real llama-server
// built by `make engine`), then used through the gateway: chat completions (whole and streamed,
// with and without usage), completions, bad input, another organization, and the usage records
// the gateway metered, summed by /v1/organization/usage/completions.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <thread>

#include "support/raw_http.h"
#include "support/model_cloud.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;

namespace {

json with(json j, const std::string& k, json v) {
  j[k] = std::move(v);
  return j;
}

class Gateway : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      cloud = new ModelCloud();
    } catch (const std::exception& e) {
      FAIL() << e.what();
    }
    srv = cloud->srv.get();
    c = cloud->c.get();
    a = &cloud->a;
    b = &cloud->b;
    dep_id = cloud->dep_id;
  }
  static void TearDownTestSuite() {
    delete cloud;
    cloud = nullptr;
  }

  http::ClientResponse post(const std::string& key, const std::string& path, const json& body) {
    return cloud->post(key, path, body);
  }
  static json chat(const std::string& text, int max_tokens = 8) { return ModelCloud::chat(text, max_tokens); }

  static ModelCloud* cloud;
  static ServerProcess* srv;
  static http::Client* c;
  static Tenant *a, *b;
  static std::string dep_id;
};
ModelCloud* Gateway::cloud = nullptr;
ServerProcess* Gateway::srv = nullptr;
http::Client* Gateway::c = nullptr;
Tenant* Gateway::a = nullptr;
Tenant* Gateway::b = nullptr;
std::string Gateway::dep_id;

TEST_F(Gateway, ChatCompletionWholeCarriesUsageAndRequestId) {
  auto r = post(a->project_key, "/v1/chat/completions", chat("Hello there"));
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_FALSE(r.header("x-request-id").empty());
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "tiny-llama");
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_GT(j["usage"]["completion_tokens"].get<int>(), 0);
  EXPECT_LE(j["usage"]["completion_tokens"].get<int>(), 8);
}

TEST_F(Gateway, CompletionsWork) {
  auto r = post(a->project_key, "/v1/completions", {{"model", "tiny-llama"}, {"prompt", "Once upon"}, {"max_tokens", 4}});
  ASSERT_EQ(r.status, 200u) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_GT(j["usage"]["completion_tokens"].get<int>(), 0);
}

// Streamed: SSE chunks, [DONE] last; the usage chunk only when the client asked for it.
TEST_F(Gateway, StreamingForwardsChunksAndHonoursIncludeUsage) {
  for (bool include : {false, true}) {
    SCOPED_TRACE(include ? "include_usage" : "no usage asked");
    json body = chat("Tell me a story", 12);
    body["stream"] = true;
    if (include) body["stream_options"] = {{"include_usage", true}};
    RawConn conn(srv->url());
    std::string payload = body.dump();
    ASSERT_TRUE(conn.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + a->project_key +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(payload.size()) +
                          "\r\n\r\n" + payload));
    RawResponse r = conn.read_response(30s);
    ASSERT_TRUE(r.got_response);
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_NE(r.header("content-type").find("text/event-stream"), std::string::npos);
    EXPECT_FALSE(r.header("x-request-id").empty());
    size_t chunks = 0, usage_chunks = 0;
    for (size_t at = 0; (at = r.body.find("data: {", at)) != std::string::npos; ++at) {
      size_t end = r.body.find("\n\n", at);
      json ev = json::parse(r.body.substr(at + 6, end - at - 6));
      ++chunks;
      if (ev.contains("usage") && ev["usage"].is_object()) ++usage_chunks;
    }
    EXPECT_GT(chunks, 2u);
    EXPECT_EQ(usage_chunks, include ? 1u : 0u) << r.body;
    ASSERT_GE(r.body.size(), 14u);
    EXPECT_EQ(r.body.substr(r.body.size() - 14), "data: [DONE]\n\n");
  }
}

TEST_F(Gateway, BadInputGetsOpenAiErrors) {
  auto no_model = post(a->project_key, "/v1/chat/completions", {{"messages", json::array()}});
  EXPECT_EQ(no_model.status, 400u);
  EXPECT_EQ(json::parse(no_model.body)["error"]["param"], "model");
  auto no_messages = post(a->project_key, "/v1/chat/completions", {{"model", "tiny-llama"}});
  EXPECT_EQ(no_messages.status, 400u);
  EXPECT_EQ(json::parse(no_messages.body)["error"]["param"], "messages");
  auto unknown = post(a->project_key, "/v1/chat/completions", with(chat("hi"), "model", "gpt-99"));
  EXPECT_EQ(unknown.status, 404u);
  EXPECT_EQ(json::parse(unknown.body)["error"]["code"], "model_not_found");
  auto bad_key = post("sk-proj-nope", "/v1/chat/completions", chat("hi"));
  EXPECT_EQ(bad_key.status, 401u);
  auto malformed = c->request("POST", "/v1/chat/completions", "{not json",
                              {{"Authorization", "Bearer " + a->project_key}, {"Content-Type", "application/json"}});
  EXPECT_EQ(malformed.status, 400u);
  EXPECT_EQ(post(a->project_key, "/v1/chat/completions", with(chat("hi"), "stream", "yes")).status, 400u);
}

// Another organization's deployment is invisible: the catalog model exists, but B has no
// deployment of it.
TEST_F(Gateway, AnotherOrganizationsDeploymentIsInvisible) {
  auto r = post(b->project_key, "/v1/chat/completions", chat("hi"));
  EXPECT_EQ(r.status, 404u) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "model_not_found");
  Api pb{*c, b->project_key, ""};
  EXPECT_EQ(pb.call("GET", "/v1/deployments/" + dep_id).status, 404u);
}

// Every finished request left one usage record with the engine's token counts.
TEST_F(Gateway, UsageRecordsEqualWhatTheEngineReported) {
  Api admin{*c, a->admin_key, ""};
  int64_t day = int64_t(time(nullptr)) / 86400 * 86400;
  auto total = [&] {
    json u = admin.get("/v1/organization/usage/completions?start_time=" + std::to_string(day) + "&bucket_width=1d&limit=1");
    json t = {{"input", 0}, {"output", 0}, {"requests", 0}};
    for (const auto& res : u["data"][0]["results"]) {
      t["input"] = t["input"].get<int64_t>() + res["input_tokens"].get<int64_t>();
      t["output"] = t["output"].get<int64_t>() + res["output_tokens"].get<int64_t>();
      t["requests"] = t["requests"].get<int64_t>() + res["num_model_requests"].get<int64_t>();
    }
    return t;
  };
  json before = total();
  int64_t in = 0, out = 0;
  for (int i = 0; i < 3; ++i) {
    auto r = post(a->project_key, "/v1/chat/completions", chat("count " + std::to_string(i)));
    ASSERT_EQ(r.status, 200u) << r.body;
    json j = json::parse(r.body);
    in += j["usage"]["prompt_tokens"].get<int64_t>();
    out += j["usage"]["completion_tokens"].get<int64_t>();
  }
  json after = total();  // the record is durable before the response completes: no waiting
  EXPECT_EQ(after["requests"].get<int64_t>() - before["requests"].get<int64_t>(), 3);
  EXPECT_EQ(after["input"].get<int64_t>() - before["input"].get<int64_t>(), in);
  EXPECT_EQ(after["output"].get<int64_t>() - before["output"].get<int64_t>(), out);
  // Grouped by model and project.
  json g = admin.get("/v1/organization/usage/completions?start_time=" + std::to_string(day) +
                     "&group_by=model&group_by=project_id&limit=1");
  ASSERT_FALSE(g["data"][0]["results"].empty()) << g.dump();
  EXPECT_EQ(g["data"][0]["results"][0]["model"], "tiny-llama");
  EXPECT_EQ(g["data"][0]["results"][0]["project_id"], a->project_id);
  // B sees none of it.
  Api badmin{*c, b->admin_key, ""};
  json ub = badmin.get("/v1/organization/usage/completions?start_time=" + std::to_string(day) + "&limit=1");
  EXPECT_TRUE(ub["data"][0]["results"].empty()) << ub.dump();
}

// A client that goes away mid-stream cancels the upstream request; the gateway keeps serving.
TEST_F(Gateway, ClientDisconnectMidStreamIsHarmless) {
  {
    json body = chat("A long story please", 400);
    body["stream"] = true;
    RawConn conn(srv->url());
    std::string payload = body.dump();
    ASSERT_TRUE(conn.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + a->project_key +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(payload.size()) +
                          "\r\n\r\n" + payload));
    std::this_thread::sleep_for(300ms);
  }
  auto r = post(a->project_key, "/v1/chat/completions", chat("still there?"));
  EXPECT_EQ(r.status, 200u) << r.body;
}

}  // namespace
