// Rate limits end to end, with real processes (the fixture of gateway_test.cpp: a server, an
// agent, the tiny model deployed on the real llama-server): a project's requests and tokens per
// minute, per-key limits, the x-ratelimit-* headers on every answer, 429 in OpenAI's shape with
// retry-after, updates taking effect within a second, and the rate_limits admin routes' checks.
// Each test uses a project of its own, so that buckets do not carry over between tests.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>

#include "gateway/ratelimit.h"
#include "store/store.h"
#include "support/model_cloud.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;

namespace {

class RateLimit : public ::testing::Test {
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

  struct Proj {
    std::string id, key, key_id;
  };
  // A fresh project of A with one key.
  Proj project(const std::string& name) {
    Api admin{*c, a->admin_key, ""};
    Proj p;
    p.id = admin.post("/v1/organization/projects", {{"name", name}}, 201)["id"];
    json k = admin.post("/v1/organization/projects/" + p.id + "/api_keys", {{"name", "k"}}, 201);
    p.key = k["value"];
    p.key_id = k["id"];
    return p;
  }
  std::string key_of(const Proj& p) {
    return Api{*c, a->admin_key, ""}.post("/v1/organization/projects/" + p.id + "/api_keys", {{"name", "k2"}}, 201)["value"];
  }
  json set_limit(const Proj& p, const json& body) {
    return Api{*c, a->admin_key, ""}.post("/v1/organization/projects/" + p.id + "/rate_limits/rl-tiny-llama", body);
  }
  static int64_t num(const http::ClientResponse& r, const std::string& h) {
    std::string v = r.header(h);
    EXPECT_FALSE(v.empty()) << "no header " << h;
    return v.empty() ? -1 : std::stoll(v);
  }

  static ModelCloud* cloud;
  static ServerProcess* srv;
  static http::Client* c;
  static Tenant *a, *b;
  static std::string dep_id;
};
ModelCloud* RateLimit::cloud = nullptr;
ServerProcess* RateLimit::srv = nullptr;
http::Client* RateLimit::c = nullptr;
Tenant* RateLimit::a = nullptr;
Tenant* RateLimit::b = nullptr;
std::string RateLimit::dep_id;


// The refresh thread picks an update up within RateLimiter::kRefreshMs; give it a little more.
void settle_update() { std::this_thread::sleep_for(300ms); }

// OpenAI's reset durations: Go's duration format.
TEST(RateLimitFormat, ResetDurationsLookLikeOpenAis) {
  using gateway::RateLimiter;
  EXPECT_EQ(RateLimiter::format_duration(0), "0ms");
  EXPECT_EQ(RateLimiter::format_duration(120), "120ms");
  EXPECT_EQ(RateLimiter::format_duration(1000), "1s");
  EXPECT_EQ(RateLimiter::format_duration(1500), "1.5s");
  EXPECT_EQ(RateLimiter::format_duration(29'950), "29.95s");
  EXPECT_EQ(RateLimiter::format_duration(1'050), "1.05s");
  EXPECT_EQ(RateLimiter::format_duration(1'005), "1.005s");
  EXPECT_EQ(RateLimiter::format_duration(60'100), "1m0.1s");
  EXPECT_EQ(RateLimiter::format_duration(360'000), "6m0s");
  EXPECT_EQ(RateLimiter::format_duration(3'661'000), "1h1m1s");
  EXPECT_EQ(RateLimiter::format_duration(-5), "0ms");
  EXPECT_EQ(RateLimiter::format_duration(INT64_MAX), "2562047788015h12m55.807s");  // the longest
}

// settle() finds the buckets acquire() took from through the reservation; once a sweep of idle
// buckets has run in between (more than 100,000 buckets), by name. Either way the difference
// between what was reserved and what was used goes back to the project's bucket, and a bucket
// the sweep erased (it was full) is not brought back by a settle.
TEST(RateLimitBuckets, SettleGivesBackTheDifferenceBeforeAndAfterASweep) {
  TempDir d;
  auto store = open_sqlite_store(StoreOptions{(std::filesystem::path(d.path()) / "aicloud.db").string(), false});
  gateway::RateLimiter rl(*store);
  const std::string model = "m", key = "key_1";
  const int64_t cap = gateway::kDefaultTokensPerMinute;  // refills at cap / 60 s
  // Checks that `project` has `want` tokens left, less none and more at most what refilled since t0
  // (the limiter's clock counts whole milliseconds: one more of refill).
  auto expect_left = [&](const std::string& project, int64_t want, std::chrono::steady_clock::time_point t0) {
    int64_t left = rl.acquire(project, key, model, 0).report.remaining_tokens;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(left, want - 1) << project;
    EXPECT_LE(left, want + int64_t((secs + 0.001) * double(cap) / 60) + 2) << project;
  };

  auto t0 = std::chrono::steady_clock::now();
  auto a = rl.acquire("proj_a", key, model, 6'000'000);
  ASSERT_TRUE(a.allowed);
  EXPECT_EQ(a.reserved.tokens(), 6'000'000);
  expect_left("proj_a", cap - 6'000'000, t0);
  rl.settle(a.reserved, "proj_a", key, model, 1'000'000);  // 5,000,000 back
  expect_left("proj_a", cap - 1'000'000, t0);

  // A reservation that outlives a sweep: other projects' buckets (two each) pass the sweep's
  // threshold, and the next acquire() sweeps. proj_b's bucket is far from full, so it stays.
  t0 = std::chrono::steady_clock::now();
  auto b = rl.acquire("proj_b", key, model, 9'000'000);
  ASSERT_TRUE(b.allowed);
  for (int i = 0; i < 50'001; ++i) rl.acquire("p" + std::to_string(i), key, model, 1);
  ASSERT_TRUE(rl.acquire("proj_c", key, model, 1).allowed);  // (this one sweeps)
  rl.settle(b.reserved, "proj_b", key, model, 2'000'000);  // 7,000,000 back, found by name
  expect_left("proj_b", cap - 2'000'000, t0);
  // A request that used more than it reserved takes the rest: 3,000,010 in all.
  auto e = rl.acquire("proj_b", key, model, 10);
  rl.settle(e.reserved, "proj_b", key, model, 3'000'010);
  expect_left("proj_b", cap - 5'000'010, t0);
}

// Every answer's x-ratelimit-* lines, as http::Response::fields holds them; the largest values
// fit the room the gateway reserves for them.
TEST(RateLimitFormat, HeaderLinesCarryBothKindsInOpenAisOrder) {
  using gateway::RateLimiter;
  auto header_lines = [](const RateLimiter::Report& r) {
    std::string out;
    RateLimiter::append_header_lines(out, r);
    return out;
  };
  RateLimiter::Report r{60, 59, 1'000, 150'000, 149'000, 400};
  EXPECT_EQ(header_lines(r),
            "x-ratelimit-limit-requests: 60\r\nx-ratelimit-remaining-requests: 59\r\n"
            "x-ratelimit-reset-requests: 1s\r\nx-ratelimit-limit-tokens: 150000\r\n"
            "x-ratelimit-remaining-tokens: 149000\r\nx-ratelimit-reset-tokens: 400ms\r\n");
  RateLimiter::Report big{INT64_MIN, INT64_MIN, INT64_MAX, INT64_MIN, INT64_MIN, INT64_MAX};
  std::string lines = header_lines(big);
  EXPECT_EQ(lines.size(), 182u + 4 * 20 + 2 * 24);  // the names and line ends, four INT64_MINs, two durations
  EXPECT_TRUE(lines.ends_with("x-ratelimit-reset-tokens: 2562047788015h12m55.807s\r\n"));
  EXPECT_LE(lines.size(), RateLimiter::kHeaderLinesRoom);
  // Appended after other lines into the room reserved for them: written in place.
  std::string fields = "x-a: b\r\n";
  fields.reserve(fields.size() + RateLimiter::kHeaderLinesRoom);
  const char* before = fields.data();
  RateLimiter::append_header_lines(fields, big);
  EXPECT_EQ(fields.data(), before);
  EXPECT_EQ(fields, "x-a: b\r\n" + lines);
}

TEST_F(RateLimit, DefaultsAreListedInOpenAisShape) {
  Proj p = project("defaults");
  json list = Api{*c, a->admin_key, ""}.get("/v1/organization/projects/" + p.id + "/rate_limits");
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u) << list.dump();
  json rl = list["data"][0];
  EXPECT_EQ(rl["object"], "project.rate_limit");
  EXPECT_EQ(rl["id"], "rl-tiny-llama");
  EXPECT_EQ(rl["model"], "tiny-llama");
  EXPECT_EQ(rl["max_requests_per_1_minute"], 10000);
  EXPECT_EQ(rl["max_tokens_per_1_minute"], 10000000);
  EXPECT_EQ(rl["max_requests_per_1_minute_per_key"], 0);
  EXPECT_EQ(list["has_more"], false);
  // A request under the defaults carries the headers too.
  auto r = post(p.key, "/v1/chat/completions", chat("hi", 2));
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_EQ(num(r, "x-ratelimit-limit-requests"), 10000);
  EXPECT_EQ(num(r, "x-ratelimit-remaining-requests"), 9999);
  EXPECT_EQ(num(r, "x-ratelimit-limit-tokens"), 10000000);
}

// 2 requests a minute: the headers count down, the third is a 429 with every header and
// retry-after; raising the limit lets the next request through within a second.
TEST_F(RateLimit, RequestsPerMinuteCountDownThen429ThenUpdateTakesEffect) {
  Proj p = project("rpm");
  json rl = set_limit(p, {{"max_requests_per_1_minute", 2}});
  EXPECT_EQ(rl["max_requests_per_1_minute"], 2);
  EXPECT_EQ(rl["max_tokens_per_1_minute"], 10000000);  // unchanged: the default
  settle_update();
  json list = Api{*c, a->admin_key, ""}.get("/v1/organization/projects/" + p.id + "/rate_limits");
  EXPECT_EQ(list["data"][0]["max_requests_per_1_minute"], 2);

  auto r1 = post(p.key, "/v1/chat/completions", chat("one", 2));
  ASSERT_EQ(r1.status, 200u) << r1.body;
  EXPECT_EQ(num(r1, "x-ratelimit-limit-requests"), 2);
  EXPECT_EQ(num(r1, "x-ratelimit-remaining-requests"), 1);
  EXPECT_FALSE(r1.header("x-ratelimit-reset-requests").empty());
  EXPECT_FALSE(r1.header("x-ratelimit-remaining-tokens").empty());
  auto r2 = post(p.key, "/v1/chat/completions", chat("two", 2));
  ASSERT_EQ(r2.status, 200u) << r2.body;
  EXPECT_EQ(num(r2, "x-ratelimit-remaining-requests"), 0);

  auto r3 = post(p.key, "/v1/chat/completions", chat("three", 2));
  ASSERT_EQ(r3.status, 429u) << r3.body;
  json e = json::parse(r3.body)["error"];
  EXPECT_EQ(e["code"], "rate_limit_exceeded");
  EXPECT_EQ(e["type"], "requests");
  EXPECT_NE(e["message"].get<std::string>().find("requests per min"), std::string::npos) << e.dump();
  EXPECT_TRUE(e.contains("param"));
  EXPECT_EQ(num(r3, "x-ratelimit-limit-requests"), 2);
  EXPECT_EQ(num(r3, "x-ratelimit-remaining-requests"), 0);
  // A full bucket of 2 a minute is 60 s away; one request about 30 s: "29.9s" or so.
  std::string reset = r3.header("x-ratelimit-reset-requests");
  EXPECT_TRUE(reset.ends_with("s")) << reset;
  EXPECT_FALSE(r3.header("x-ratelimit-limit-tokens").empty());
  EXPECT_FALSE(r3.header("x-ratelimit-remaining-tokens").empty());
  EXPECT_FALSE(r3.header("x-ratelimit-reset-tokens").empty());
  int64_t retry = num(r3, "retry-after");
  EXPECT_GE(retry, 1);
  EXPECT_LE(retry, 60);
  EXPECT_FALSE(r3.header("x-request-id").empty());

  // Raise the limit: the next request passes within a second.
  auto t0 = std::chrono::steady_clock::now();
  set_limit(p, {{"max_requests_per_1_minute", 100}});
  unsigned status = 0;
  while (std::chrono::steady_clock::now() - t0 < 1s) {
    auto r = post(p.key, "/v1/chat/completions", chat("again", 2));
    status = r.status;
    if (status == 200) {
      EXPECT_EQ(num(r, "x-ratelimit-limit-requests"), 100);
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(status, 200u) << "the raised limit did not take effect within a second";
  // Another project of the same organization has its own buckets.
  Proj other = project("rpm-other");
  EXPECT_EQ(post(other.key, "/v1/chat/completions", chat("hi", 2)).status, 200u);
}

// max_tokens beyond the tokens a minute: 429 naming tokens; the reservation is corrected by the
// engine's real usage when the request ends.
TEST_F(RateLimit, TokensPerMinuteReservesMaxTokensAndIsCorrectedByUsage) {
  Proj p = project("tpm");
  set_limit(p, {{"max_tokens_per_1_minute", 1000}});
  settle_update();
  auto big = post(p.key, "/v1/chat/completions", chat("a long answer please", 2000));
  ASSERT_EQ(big.status, 429u) << big.body;
  json e = json::parse(big.body)["error"];
  EXPECT_EQ(e["code"], "rate_limit_exceeded");
  EXPECT_EQ(e["type"], "tokens");
  EXPECT_NE(e["message"].get<std::string>().find("tokens per min"), std::string::npos) << e.dump();
  EXPECT_EQ(num(big, "x-ratelimit-limit-tokens"), 1000);
  EXPECT_EQ(num(big, "x-ratelimit-remaining-tokens"), 1000);  // nothing was taken
  EXPECT_GE(num(big, "retry-after"), 1);

  json body = chat("Hello there", 8);
  int64_t reserve = 8 + int64_t(body.dump().size()) / 4 + 1;  // max_tokens + request bytes / 4
  auto t0 = std::chrono::steady_clock::now();
  auto r1 = post(p.key, "/v1/chat/completions", body);
  ASSERT_EQ(r1.status, 200u) << r1.body;
  int64_t rem1 = num(r1, "x-ratelimit-remaining-tokens");
  EXPECT_LE(rem1, 1000 - reserve);
  EXPECT_GE(rem1, 1000 - reserve - 1);
  json u = json::parse(r1.body)["usage"];
  int64_t used = u["prompt_tokens"].get<int64_t>() + u["completion_tokens"].get<int64_t>();
  auto r2 = post(p.key, "/v1/chat/completions", body);
  ASSERT_EQ(r2.status, 200u) << r2.body;
  int64_t rem2 = num(r2, "x-ratelimit-remaining-tokens");
  // The first request's reservation was replaced by its real usage, plus what the bucket refilled
  // (1000 a minute) between the two: at most the time both requests took (seconds under ASan on
  // a busy machine), and a token of rounding.
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t refill = int64_t(secs * 1000 / 60) + 2;
  int64_t want = 1000 - used - reserve;
  EXPECT_GE(rem2, want - 1) << "used " << used << ", reserved " << reserve;
  EXPECT_LE(rem2, want + refill) << "used " << used << ", reserved " << reserve << ", " << secs << " s";
  EXPECT_EQ(num(r2, "x-ratelimit-limit-tokens"), 1000);
}

// Per-key limits: each key of the project gets its own bucket; the project's still applies.
TEST_F(RateLimit, PerKeyLimits) {
  Proj p = project("per-key");
  json rl = set_limit(p, {{"max_requests_per_1_minute_per_key", 1}});
  EXPECT_EQ(rl["max_requests_per_1_minute_per_key"], 1);
  settle_update();
  EXPECT_EQ(post(p.key, "/v1/chat/completions", chat("k1", 2)).status, 200u);
  auto second = post(p.key, "/v1/chat/completions", chat("k1 again", 2));
  EXPECT_EQ(second.status, 429u) << second.body;
  EXPECT_EQ(num(second, "x-ratelimit-limit-requests"), 1);
  std::string k2 = key_of(p);
  EXPECT_EQ(post(k2, "/v1/chat/completions", chat("k2", 2)).status, 200u);
}

TEST_F(RateLimit, RateLimitRoutesCheckTheirInput) {
  Proj p = project("bad-input");
  Api admin{*c, a->admin_key, ""};
  std::string path = "/v1/organization/projects/" + p.id + "/rate_limits/rl-tiny-llama";
  for (const char* f : {"max_requests_per_1_minute", "max_tokens_per_1_minute", "max_requests_per_1_minute_per_key",
                        "max_tokens_per_1_minute_per_key"}) {
    SCOPED_TRACE(f);
    auto r = admin.call("POST", path, {{f, -1}});
    ASSERT_EQ(r.status, 400u) << r.body;
    EXPECT_EQ(json::parse(r.body)["error"]["param"], f);
    EXPECT_EQ(admin.call("POST", path, {{f, "ten"}}).status, 400u);
  }
  auto unknown = admin.call("POST", path, {{"max_requests_per_day", 5}});
  EXPECT_EQ(unknown.status, 400u) << unknown.body;
  EXPECT_EQ(admin.call("POST", "/v1/organization/projects/" + p.id + "/rate_limits/rl-gpt-99",
                       {{"max_requests_per_1_minute", 5}}).status, 404u);
  EXPECT_EQ(admin.call("POST", "/v1/organization/projects/" + p.id + "/rate_limits/tiny-llama",
                       {{"max_requests_per_1_minute", 5}}).status, 404u);
  EXPECT_EQ(admin.call("GET", "/v1/organization/projects/" + p.id + "/rate_limits?limit=0").status, 400u);
  // Nothing was stored by the refused updates.
  EXPECT_EQ(admin.get("/v1/organization/projects/" + p.id + "/rate_limits")["data"][0]["max_requests_per_1_minute"],
            10000);

  // Another organization: 404 on A's project, reading or writing; A's limit unchanged.
  Api other{*c, b->admin_key, ""};
  auto get = other.call("GET", "/v1/organization/projects/" + p.id + "/rate_limits");
  EXPECT_EQ(get.status, 404u) << get.body;
  auto set = other.call("POST", path, {{"max_requests_per_1_minute", 1}});
  EXPECT_EQ(set.status, 404u) << set.body;
  EXPECT_EQ(admin.get("/v1/organization/projects/" + p.id + "/rate_limits")["data"][0]["max_requests_per_1_minute"],
            10000);
  // A project key may not manage limits.
  EXPECT_EQ(Api({*c, p.key, ""}).call("GET", "/v1/organization/projects/" + p.id + "/rate_limits").status, 403u);
}

}  // namespace
