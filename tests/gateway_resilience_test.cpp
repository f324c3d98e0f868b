// The gateway when things go wrong, end to end with real processes (the ModelCloud fixture: a
// server, an agent with two declared GPUs, the tiny model on the real llama-server):
//   - scale from zero: a deployment with min_replicas 0 goes to zero when idle (its engine process
//     ends) and a request wakes it, waits and gets a real completion; when no replica can be ready
//     within the wait limit, the request gets 503 with retry-after;
//   - a replica killed (kill -9) under a steady concurrent load: the requests go on through the
//     other replica and the deployment replaces the failed one;
//   - usage durability: every response a client saw complete has its usage record after the
//     server is killed (kill -9) right after the last response and restarted on the same data.
// Each test starts a cloud of its own (ctest runs each in its own process) and polls for states
// rather than sleeping; the figures they measure are printed as "[ measured ]" lines.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "support/model_cloud.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Polls f every `step` until it returns true or `timeout` passes; whether it did.
bool eventually(const std::function<bool()>& f, std::chrono::milliseconds timeout,
                std::chrono::milliseconds step = 100ms) {
  auto deadline = Clock::now() + timeout;
  while (true) {
    if (f()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(step);
  }
}

http::ClientResponse post_json(http::Client& c, const std::string& key, const std::string& path, const json& body) {
  return c.request("POST", path, body.dump(), {{"Authorization", "Bearer " + key}, {"Content-Type", "application/json"}});
}

// The replica workloads of a deployment (newest first), with their status.
std::vector<json> replicas_of(Api& p, const std::string& dep_id) {
  std::vector<json> out;
  json list = p.get("/v1/compute/services?limit=100");
  for (const auto& w : list["data"]) {
    if (w["spec"].value("deployment_id", "") == dep_id) out.push_back(w);
  }
  return out;
}

bool terminal(const json& w) {
  std::string ph = w["status"].value("phase", "");
  return ph == "stopped" || ph == "failed" || ph == "succeeded" || ph == "cancelled" || ph == "lost" || ph == "preempted";
}

// The port of a ready replica's endpoint ("host:port"), or -1.
int endpoint_port(const json& w) {
  if (!w["status"].contains("endpoint") || !w["status"]["endpoint"].is_string()) return -1;
  std::string ep = w["status"]["endpoint"];
  return std::atoi(ep.substr(ep.rfind(':') + 1).c_str());
}

json deployment_request(int min_replicas, int max_replicas, int gpus) {
  return {{"model", "tiny-llama"},
          {"region", "eu-west-1"},
          {"resources", {{"gpu_type", "H100-80GB"}, {"gpus", gpus}}},
          {"engine_args", {{"context_size", 512}, {"parallel", 2}}},
          {"min_replicas", min_replicas},
          {"max_replicas", max_replicas},
          {"scale_to_zero_after_seconds", 10}};  // the least the API accepts
}

// A value of the server's /metrics (0 if absent).
// A counter's value in a scrape of /metrics (0 when absent).
double metric(const std::string& scrape, const std::string& name) {
  size_t at = scrape.find("\n" + name + " ");
  if (at == std::string::npos) return 0;
  return std::atof(scrape.c_str() + at + name.size() + 2);
}

std::unique_ptr<ModelCloud> make_cloud(ModelCloudOptions opts = {}) {
  try {
    return std::make_unique<ModelCloud>(std::move(opts));
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
    return nullptr;
  }
}

// ---- scale from zero ----

// Another organization (beta) deploys the same catalog model with min_replicas 0, next to acme's
// always-on deployment: it starts at zero, a request wakes it (waits, 200), it goes back to zero
// after its idle period (no live replica workload, the engine process gone), and the next request
// wakes it again.
TEST(GatewayResilience, ScalesToZeroWhenIdleAndARequestWakesIt) {
  auto cloud = make_cloud();
  ASSERT_TRUE(cloud);
  Api pb{*cloud->c, cloud->b.project_key, ""};
  std::string z = pb.post("/v1/deployments", deployment_request(0, 1, 1), 201)["id"];
  auto phase = [&] { return pb.get("/v1/deployments/" + z)["status"].value("phase", ""); };
  ASSERT_TRUE(eventually([&] { return phase() == "scaled_to_zero"; }, 20s)) << pb.get("/v1/deployments/" + z).dump();
  EXPECT_TRUE(replicas_of(pb, z).empty());

  // The engine processes of acme's deployment, to tell beta's apart.
  auto before = cloud->engine_processes();
  ASSERT_EQ(before.size(), 1u);

  // Wake 1: the request waits for a replica to be placed, started and found healthy.
  http::Client client(cloud->srv->url(), 120s);
  auto t0 = Clock::now();
  auto r = post_json(client, cloud->b.project_key, "/v1/chat/completions", ModelCloud::chat("Wake up", 8));
  double wake1 = seconds_since(t0);
  ASSERT_EQ(r.status, 200u) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  EXPECT_GT(j["usage"]["completion_tokens"].get<int>(), 0);
  json d = pb.get("/v1/deployments/" + z);
  EXPECT_EQ(d["status"]["ready_replicas"], 1) << d.dump();
  EXPECT_EQ(d["status"]["phase"], "ready");
  auto reps = replicas_of(pb, z);
  ASSERT_EQ(reps.size(), 1u) << pb.get("/v1/compute/services?limit=100").dump();
  int port = endpoint_port(reps[0]);
  ASSERT_GT(port, 0) << reps[0].dump();
  pid_t engine = -1;
  for (auto [pid, p] : cloud->engine_processes()) {
    if (p == port) engine = pid;
  }
  ASSERT_GT(engine, 0) << "no llama-server listens on port " << port;
  EXPECT_FALSE(before.count(engine));

  // Traffic that goes on for longer than the idle period keeps the replica: one short request a
  // second for 12 s (each far shorter than the controller's round, so a sampled in-flight count
  // would miss them all).
  auto trickle_start = Clock::now();
  double slowest = 0;
  int ticks = 0;
  while (seconds_since(trickle_start) < 12) {
    auto t = Clock::now();
    auto rr = post_json(client, cloud->b.project_key, "/v1/chat/completions", ModelCloud::chat("tick", 2));
    ASSERT_EQ(rr.status, 200u) << rr.body;
    slowest = std::max(slowest, seconds_since(t));
    ++ticks;
    std::this_thread::sleep_for(1s);
  }
  auto last_request_end = Clock::now() - 1s;
  EXPECT_EQ(phase(), "ready") << "scaled to zero while requests kept coming";
  EXPECT_EQ(::kill(engine, 0), 0) << "the replica's engine was stopped while requests kept coming";
  EXPECT_EQ(replicas_of(pb, z).size(), 1u) << "a request had to wake the deployment again";

  // Idle: to zero after scale_to_zero_after_seconds (10 s), not before.
  ASSERT_TRUE(eventually([&] { return phase() == "scaled_to_zero"; }, 60s)) << pb.get("/v1/deployments/" + z).dump();
  double idle = seconds_since(last_request_end);
  EXPECT_GE(idle, 9.5) << "scaled to zero before its idle period";
  d = pb.get("/v1/deployments/" + z);
  EXPECT_EQ(d["status"]["ready_replicas"], 0);
  EXPECT_EQ(d["status"]["replicas"], 0);
  // Its replica workload stops and the engine process ends; acme's is untouched.
  EXPECT_TRUE(eventually([&] {
    auto rs = replicas_of(pb, z);
    return std::all_of(rs.begin(), rs.end(), terminal);
  }, 30s)) << json(replicas_of(pb, z)).dump();
  EXPECT_TRUE(eventually([&] { return ::kill(engine, 0) != 0 && !cloud->engine_processes().count(engine); }, 30s))
      << "the scaled-to-zero replica's llama-server (pid " << engine << ") still runs";
  auto now_running = cloud->engine_processes();
  EXPECT_EQ(now_running.size(), 1u);
  EXPECT_TRUE(now_running.count(before.begin()->first)) << "acme's replica must keep running";
  // acme is served all along.
  EXPECT_EQ(post_json(client, cloud->a.project_key, "/v1/chat/completions", ModelCloud::chat("still here?")).status, 200u);

  // Wake 2, from a deployment that really is at zero (no process at all).
  t0 = Clock::now();
  r = post_json(client, cloud->b.project_key, "/v1/chat/completions", ModelCloud::chat("Wake up again", 8));
  double wake2 = seconds_since(t0);
  ASSERT_EQ(r.status, 200u) << r.body;
  EXPECT_GT(json::parse(r.body)["usage"]["completion_tokens"].get<int>(), 0);
  EXPECT_EQ(cloud->engine_processes().size(), 2u);
  EXPECT_EQ(pb.get("/v1/deployments/" + z)["status"]["ready_replicas"], 1);
  // A warm request is much faster than a wake (the wake waited for a process to start).
  t0 = Clock::now();
  ASSERT_EQ(post_json(client, cloud->b.project_key, "/v1/chat/completions", ModelCloud::chat("warm", 8)).status, 200u);
  double warm = seconds_since(t0);
  std::printf("[ measured ] scale from zero: first wake %.2f s, second wake %.2f s, warm request %.3f s; %d requests "
              "over 12 s kept it up (slowest %.3f s); scaled to zero %.1f s after the last request (idle period 10 s)\n",
              wake1, wake2, warm, ticks, slowest, idle);
}

// No replica can be ready within the wait limit (here: the deployment wants both GPUs and acme's
// replica holds one), so the request gets 503 with retry-after once the limit (--wake-timeout-ms)
// has passed, not sooner and not much later, even though another organization's deployment of
// the same model name keeps getting ready replicas meanwhile.
TEST(GatewayResilience, WakeWaitLimitGets503WithRetryAfter) {
  auto cloud = make_cloud(ModelCloudOptions{{"--wake-timeout-ms", "3000"}});
  ASSERT_TRUE(cloud);
  Api pb{*cloud->c, cloud->b.project_key, ""};
  std::string z = pb.post("/v1/deployments", deployment_request(0, 1, 2), 201)["id"];
  ASSERT_TRUE(eventually([&] { return pb.get("/v1/deployments/" + z)["status"].value("phase", "") == "scaled_to_zero"; },
                         20s));

  http::Client client(cloud->srv->url(), 60s);
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streamed" : "whole");
    json body = ModelCloud::chat("Anyone there?", 8);
    if (stream) body["stream"] = true;
    auto t0 = Clock::now();
    auto r = post_json(client, cloud->b.project_key, "/v1/chat/completions", body);
    double waited = seconds_since(t0);
    EXPECT_EQ(r.status, 503u) << r.body;
    EXPECT_GE(waited, 2.9);
    EXPECT_LT(waited, 10.0) << "the wait limit is 3 s";
    std::string ra = r.header("retry-after");
    ASSERT_FALSE(ra.empty());
    EXPECT_GE(std::atoi(ra.c_str()), 1);
    EXPECT_FALSE(r.header("x-request-id").empty());
    EXPECT_NE(r.header("content-type").find("application/json"), std::string::npos);
    json e = json::parse(r.body);
    ASSERT_TRUE(e["error"].is_object()) << r.body;
    EXPECT_EQ(e["error"]["type"], "server_error");
    EXPECT_EQ(e["error"]["code"], "model_starting");
    EXPECT_TRUE(e["error"]["param"].is_null());
    EXPECT_NE(e["error"]["message"].get<std::string>().find("tiny-llama"), std::string::npos);
    std::printf("[ measured ] wake wait limit 3 s (%s): 503 after %.2f s, retry-after %s\n",
                stream ? "streamed" : "whole", waited, ra.c_str());
  }
  // The wake asked for a replica (it waits for capacity), and acme is served throughout.
  json d = pb.get("/v1/deployments/" + z);
  EXPECT_EQ(d["status"]["ready_replicas"], 0) << d.dump();
  EXPECT_EQ(post_json(client, cloud->a.project_key, "/v1/chat/completions", ModelCloud::chat("hi")).status, 200u);
}

// ---- a replica killed under load ----

TEST(GatewayResilience, ReplicaKilledUnderLoadIsRetriedAndReplaced) {
  auto cloud = make_cloud();
  ASSERT_TRUE(cloud);
  Api pa{*cloud->c, cloud->a.project_key, ""};
  const std::string& dep = cloud->dep_id;
  pa.post("/v1/deployments/" + dep, {{"min_replicas", 2}, {"max_replicas", 2}});
  ASSERT_TRUE(eventually([&] { return pa.get("/v1/deployments/" + dep)["status"]["ready_replicas"] == 2; }, 60s))
      << pa.get("/v1/deployments/" + dep).dump();
  ASSERT_EQ(cloud->engine_processes().size(), 2u);

  struct Failure {
    double at;  // seconds since the load began
    unsigned status;
    std::string what;
  };
  std::mutex mu;
  std::vector<Failure> failures;
  std::vector<double> ok_at;
  std::atomic<bool> stop{false};
  auto load_start = Clock::now();
  const int kClients = 4;
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto c = std::make_unique<http::Client>(cloud->srv->url(), 60s);
      for (int n = 0; !stop; ++n) {
        try {
          auto r = post_json(*c, cloud->a.project_key, "/v1/chat/completions",
                             ModelCloud::chat("client " + std::to_string(i) + " request " + std::to_string(n), 12));
          std::lock_guard lk(mu);
          if (r.status == 200 && json::parse(r.body)["usage"]["completion_tokens"].get<int>() > 0) {
            ok_at.push_back(seconds_since(load_start));
          } else {
            failures.push_back({seconds_since(load_start), r.status, r.body});
          }
        } catch (const std::exception& e) {
          {
            std::lock_guard lk(mu);
            failures.push_back({seconds_since(load_start), 0, e.what()});
          }
          c = std::make_unique<http::Client>(cloud->srv->url(), 60s);
        }
      }
    });
  }
  auto ok_count = [&] {
    std::lock_guard lk(mu);
    return ok_at.size();
  };
  ASSERT_TRUE(eventually([&] { return ok_count() >= 20; }, 60s)) << "the load did not get going";

  // kill -9 one replica's engine while the load runs.
  auto engines = cloud->engine_processes();
  ASSERT_EQ(engines.size(), 2u);
  pid_t victim = engines.begin()->first;
  int victim_port = engines.begin()->second;
  size_t ok_before_kill = ok_count();
  double kill_at = seconds_since(load_start);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);

  // The deployment notices and replaces it: two ready replicas again, served by two live engines,
  // neither of them the one killed. (The replica's supervisor may restart the engine in place.)
  // "Replaced": a replica workload restarted (its supervisor started the engine again) or a new one.
  auto replaced = [&] {
    auto reps = replicas_of(pa, dep);
    int restarts = 0;
    for (const auto& w : reps) restarts += terminal(w) ? 0 : w["status"].value("restarts", 0);
    return restarts > 0 || reps.size() > 2;
  };
  bool saw_dip = false;
  bool recovered = eventually([&] {
    json d = pa.get("/v1/deployments/" + dep);
    if (d["status"]["ready_replicas"] != 2) saw_dip = true;
    auto e = cloud->engine_processes();
    return d["status"]["ready_replicas"] == 2 && e.size() == 2 && !e.count(victim) && replaced();
  }, 60s);
  double recovered_at = seconds_since(load_start);
  // Load keeps flowing through the recovered deployment for a while.
  size_t ok_at_recovery = ok_count();
  eventually([&] { return ok_count() >= ok_at_recovery + 20; }, 30s);
  stop = true;
  for (auto& t : clients) t.join();

  EXPECT_TRUE(recovered) << "not replaced: " << pa.get("/v1/deployments/" + dep).dump() << "\n"
                         << json(replicas_of(pa, dep)).dump();
  EXPECT_GE(ok_at.size(), ok_at_recovery + 20) << "the load stalled after the recovery";
  size_t ok_during = 0;  // between the kill and the recovery
  for (double t : ok_at) ok_during += t >= kill_at && t <= recovered_at;
  // The gateway's log names each request it moved to another replica.
  std::string log = cloud->srv->log();
  size_t retried = 0;
  for (size_t at = 0; (at = log.find("replica failed before answering", at)) != std::string::npos; ++at) ++retried;
  auto reps = replicas_of(pa, dep);
  int restarts = 0;
  for (const auto& w : reps) restarts += terminal(w) ? 0 : w["status"].value("restarts", 0);
  std::printf("[ measured ] replica kill under load (%d clients): %zu ok before the kill, %zu ok in the %.1f s until two "
              "replicas were ready again (ready_replicas %s below 2 meanwhile), %zu ok in all, %zu failed, %zu retried "
              "on the other replica; the killed engine (port %d): %zu replica workloads, %d restarts\n",
              kClients, ok_before_kill, ok_during, recovered_at - kill_at, saw_dip ? "went" : "was never seen",
              ok_at.size(), failures.size(), retried, victim_port, reps.size(), restarts);
  for (const auto& f : failures) std::printf("  failure at %.2f s: %u %s\n", f.at, f.status, f.what.c_str());
  // Requests that were on the killed engine, and those sent to it before the gateway knew, were
  // retried on the other replica: nothing had come back from it yet.
  EXPECT_TRUE(failures.empty()) << failures.size() << " requests failed";
  EXPECT_GT(retried, 0u) << "no request met the killed replica: the test did not test the retry";
  EXPECT_GT(ok_during, 0u) << "requests stopped while a replica was down";
}

// ---- usage durability under kill -9 ----

TEST(GatewayResilience, UsageOfEveryCompletedResponseSurvivesKill9) {
  auto cloud = make_cloud();  // the server commits with --sync full (the default)
  ASSERT_TRUE(cloud);
  int64_t since = (int64_t(time(nullptr)) - 120) / 60 * 60;
  const int kRequests = 50, kClients = 8;
  std::mutex mu;
  int64_t ok = 0, in = 0, out = 0, failed = 0;
  std::atomic<int> next{0}, finished{0};
  std::atomic<bool> killed{false};
  pid_t server = cloud->srv->pid();
  // /metrics scraped while the load runs: the meter's group-commit counters.
  std::atomic<bool> load_done{false};
  double records = 0, commits = 0, commit_s = 0;
  std::thread scraper([&] {
    http::Client c(cloud->srv->url(), 5s);
    while (!load_done) {
      try {
        // (One scrape for the three: read one by one, commits went on between the reads.)
        std::string scrape = c.request("GET", "/metrics").body;
        double r = metric(scrape, "aicloud_usage_records_committed_total");
        double n = metric(scrape, "aicloud_usage_commits_total");
        double s = metric(scrape, "aicloud_usage_commit_seconds_total");
        std::lock_guard lk(mu);
        if (r >= records) records = r, commits = n, commit_s = s;
      } catch (const std::exception&) {
        if (killed) return;  // the server is gone
        // (A scrape that timed out while the machine is loaded: try again, or the counters
        // would stay unread.)
      }
      std::this_thread::sleep_for(20ms);
    }
  });
  auto t0 = Clock::now();
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      http::Client c(cloud->srv->url(), 60s);
      for (int n; (n = next++) < kRequests;) {
        bool last;
        try {
          auto r = post_json(c, cloud->a.project_key, "/v1/chat/completions",
                             ModelCloud::chat("Count to " + std::to_string(n), 4 + n % 9));
          std::lock_guard lk(mu);
          if (r.status == 200) {
            json u = json::parse(r.body)["usage"];
            ++ok;
            in += u["prompt_tokens"].get<int64_t>();
            out += u["completion_tokens"].get<int64_t>();
          } else {
            ++failed;
          }
        } catch (const std::exception&) {
          std::lock_guard lk(mu);
          ++failed;
        }
        last = ++finished == kRequests;
        if (last) {
          ::kill(server, SIGKILL);  // the instant the last response is read
          killed = true;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  load_done = true;
  scraper.join();
  double load_s = seconds_since(t0);
  ASSERT_TRUE(killed);
  cloud->srv->kill9();  // reaps it
  EXPECT_EQ(failed, 0);
  EXPECT_GT(ok, kRequests / 2);

  // Restart on the same data dir (a new port) and read the usage back.
  cloud->srv->start();
  auto c = cloud->srv->client();
  Api admin{*c, cloud->a.admin_key, ""};
  json u = admin.get("/v1/organization/usage/completions?start_time=" + std::to_string(since) +
                     "&bucket_width=1m&limit=60");
  int64_t rec_requests = 0, rec_in = 0, rec_out = 0;
  for (const auto& b : u["data"]) {
    for (const auto& res : b["results"]) {
      rec_requests += res["num_model_requests"].get<int64_t>();
      rec_in += res["input_tokens"].get<int64_t>();
      rec_out += res["output_tokens"].get<int64_t>();
    }
  }
  std::printf("[ measured ] usage durability: %d requests from %d clients in %.2f s, %lld completed with 200 "
              "(%lld input + %lld output tokens); after kill -9 and restart: %lld records (%lld input + %lld output tokens)\n",
              kRequests, kClients, load_s, (long long)ok, (long long)in, (long long)out, (long long)rec_requests,
              (long long)rec_in, (long long)rec_out);
  if (commits > 0) {
    std::printf("[ measured ] group commit (--sync full, last scrape before the kill): %.0f records in %.0f commits = "
                "%.2f records per commit (fsync), %.2f ms per commit on average\n",
                records, commits, records / commits, commit_s * 1000 / commits);
  }
  EXPECT_GE(rec_requests, ok) << u.dump();
  EXPECT_LE(rec_requests, kRequests) << "more records than requests";
  EXPECT_GE(rec_in, in);
  EXPECT_GE(rec_out, out);
  EXPECT_GT(commits, 0) << "the meter's counters are not in /metrics";
  EXPECT_LE(commits, records);
}

}  // namespace
