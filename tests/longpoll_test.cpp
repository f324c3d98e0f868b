// The agents' long-poll (GET /agent/v1/assignments?wait=SECONDS&after=VERSION), with a real
// server and real agents:
//   - an idle agent starts a new instance, stops it and runs an exec within moments (not at its
//     next poll): medians over a few, with the figures printed;
//   - an idle agent sends only a few requests in 10 s (its heartbeats and one long-poll), counted
//     from the server's /metrics;
//   - the protocol, with a node credential and no agent: an answer at once without `after` or
//     when something changed; otherwise held for `wait` and answered with the same list; woken
//     by a placement; not woken by the node's own reports; one held request per node (the older
//     one gets 409 superseded); bad `wait` is a 400; a held request does not hold up a graceful
//     server stop.
//   - NodeSignals alone: wake on bump, timeout, supersede, take, the limit.
// Server restarts and dropped connections are covered by lifecycle_test (the agents there long-poll too).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

#include "capacity/leases.h"
#include "support/server_process.h"
#include "support/timing.h"

using namespace aicloud;
using namespace aicloud::test;
using Clock = std::chrono::steady_clock;

namespace {

int64_t ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

int64_t median(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? -1 : v[v.size() / 2];
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
  return s;
}

class AgentProcess {
 public:
  AgentProcess(const std::string& server, std::string dir, const std::string& token, const std::string& name)
      : dir_(std::move(dir)) {
    std::vector<std::string> args = {aicloud_binary(), "agent",        "--server", server, "--work-dir", dir_,
                                     "--log-level",    "warn",         "--gpus",   "8xH100-80GB",
                                     "--address",      "127.0.0.1",    "--join-token", token, "--name", name};
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open((dir_ + ".log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> a;
      for (auto& s : args) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
  }
  ~AgentProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  // The node's credential, once the agent has joined.
  std::string node_key() const {
    for (int i = 0; i < 200; ++i) {
      std::string s = slurp(dir_ + "/node.json");
      if (!s.empty()) return json::parse(s)["node_key"];
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    throw std::runtime_error("the agent did not join: " + slurp(dir_ + ".log"));
  }
  std::string log() const { return slurp(dir_ + ".log"); }

 private:
  std::string dir_;
  pid_t pid_ = -1;
};

// The requests a server has answered on one route, from its /metrics.
int64_t requests(http::Client& c, const std::string& route) {
  auto r = c.request("GET", "/metrics");
  int64_t n = 0;
  std::istringstream in(r.body);
  std::string line, want = "aicloud_http_requests_total{route=\"" + route + "\"";
  while (std::getline(in, line)) {
    if (line.rfind(want, 0) == 0) n += std::stoll(line.substr(line.rfind(' ') + 1));
  }
  return n;
}

class Longpoll : public ::testing::Test {
 protected:
  // The default heartbeat (5 s), so that an idle agent's requests are what an operator's are.
  Longpoll() : srv({"--sync", "normal"}) {
    c = srv.client();
    op = std::make_unique<Api>(Api{*c, srv.admin_key(), ""});
    ::chmod(work.path().c_str(), 0711);  // agents run workloads as nobody when root
    op->post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    op->post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
    join_token = op->post("/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"max_uses", 0}}, 201)["token"];
    tenant = make_tenant(*c, srv.admin_key(), "acme");
    p = std::make_unique<Api>(Api{*c, tenant.project_key, ""});
  }

  void wait_nodes_ready(size_t n) {
    for (int i = 0; i < 300; ++i) {
      size_t ready = 0;
      json nodes = op->get("/admin/v1/nodes");
      for (const auto& x : nodes["data"]) ready += x["state"] == "ready";
      if (ready == n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "nodes not ready: " << op->get("/admin/v1/nodes").dump();
  }
  // Polls path every few ms until pred holds; fails the test after ms.
  json wait_for(const std::string& path, const std::function<bool(const json&)>& pred, int ms = 20000) {
    json w;
    auto t0 = Clock::now();
    while (ms_since(t0) < ms) {
      w = p->get(path);
      if (pred(w)) return w;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ADD_FAILURE() << "timed out waiting on " << path << ": " << w.dump();
    return w;
  }
  json wait_phase(const std::string& path, const std::string& phase) {
    return wait_for(path, [&](const json& w) { return w["status"]["phase"] == phase; });
  }
  // A node that joined through the API (no agent process): its id and credential.
  std::pair<std::string, std::string> join_node(const std::string& name) {
    auto r = c->request("POST", "/agent/v1/join",
                        dump_json({{"join_token", join_token}, {"name", name}, {"cpu_cores", 8},
                                   {"memory_bytes", int64_t(1) << 34}, {"agent_version", "test"}, {"address", "127.0.0.1"},
                                   {"gpus", json::array({{{"index", 0}, {"model", "H100-80GB"}, {"memory_mb", 81559}}})}}),
                        {{"content-type", "application/json"}});
    EXPECT_EQ(r.status, 201u) << r.body;
    json j = json::parse(r.body);
    return {j["node"]["id"], j["node_key"]};
  }

  TempDir work;
  ServerProcess srv;
  std::unique_ptr<http::Client> c;
  std::unique_ptr<Api> op, p;
  std::string join_token;
  Tenant tenant;
};

// A GET of a node's assignments on a connection of its own: status, body, milliseconds taken.
struct Answer {
  unsigned status = 0;
  json body;
  int64_t ms = 0;
};
Answer poll(const std::string& url, const std::string& key, const std::string& query) {
  http::Client c(url, std::chrono::seconds(90));
  auto t0 = Clock::now();
  auto r = c.request("GET", "/agent/v1/assignments" + query, "", {{"authorization", "Bearer " + key}});
  Answer a{r.status, json::parse(r.body, nullptr, false), ms_since(t0)};
  return a;
}
std::future<Answer> poll_async(const std::string& url, const std::string& key, const std::string& query) {
  return std::async(std::launch::async, [=] { return poll(url, key, query); });
}

}  // namespace

TEST_F(Longpoll, IdleAgentStartsStopsAndExecsPromptly) {
  AgentProcess agent(srv.url(), work.path() + "/node-a", join_token, "node-a");
  wait_nodes_ready(1);
  std::string key = agent.node_key();
  std::vector<int64_t> created_to_running, pickup, stop_to_stopped, exec_to_done;
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // the agent idles in its long-poll
    auto t0 = Clock::now();
    json inst = p->post("/v1/compute/instances", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 1},
                                                  {"command", "sleep 600"}}, 201);
    std::string path = "/v1/compute/instances/" + inst["id"].get<std::string>();
    json running = wait_phase(path, "running");
    created_to_running.push_back(ms_since(t0));
    // Placement to the agent's report of its process, both stamped by the server.
    std::string asg = running["status"]["placements"][0]["assignment_id"];
    json mine = poll(srv.url(), key, "").body;
    for (const auto& a : mine["data"]) {
      if (a["id"] == asg) pickup.push_back(a["running_at"].get<int64_t>() - a["assigned_at"].get<int64_t>());
    }

    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    t0 = Clock::now();
    json e = p->post(path + "/exec", {{"command", "echo hi"}}, 201);
    json done = wait_for(path + "/exec/" + e["id"].get<std::string>(), [](const json& x) { return x["status"] == "exited"; });
    exec_to_done.push_back(ms_since(t0));
    EXPECT_EQ(done["output"], "hi\n");

    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    t0 = Clock::now();
    p->post(path + "/stop", {{"grace_period_seconds", 5}});
    wait_phase(path, "stopped");
    stop_to_stopped.push_back(ms_since(t0));
  }
  std::printf("[ figures ] create -> running (ms): %s; median %lld\n", join(created_to_running).c_str(),
              (long long)median(created_to_running));
  std::printf("[ figures ] placed -> agent reports running (ms, server clock): %s; median %lld\n", join(pickup).c_str(),
              (long long)median(pickup));
  std::printf("[ figures ] exec -> exited with output (ms): %s; median %lld\n", join(exec_to_done).c_str(),
              (long long)median(exec_to_done));
  std::printf("[ figures ] stop -> stopped (ms): %s; median %lld\n", join(stop_to_stopped).c_str(),
              (long long)median(stop_to_stopped));
  ASSERT_EQ(pickup.size(), 5u);
  // Polling every 500 ms made these up to 500 ms longer (250 ms on average). The scheduler's
  // round (every 200 ms) is in create -> running; the pickup itself is a few milliseconds.
  EXPECT_LT(median(pickup), 150 * kTimeScale) << agent.log();
  EXPECT_LT(median(created_to_running), 300 * kTimeScale) << agent.log();
  EXPECT_LT(median(exec_to_done), 300 * kTimeScale) << agent.log();
  EXPECT_LT(median(stop_to_stopped), 300 * kTimeScale) << agent.log();
}

TEST_F(Longpoll, IdleAgentSendsFewRequests) {
  AgentProcess agent(srv.url(), work.path() + "/node-a", join_token, "node-a");
  wait_nodes_ready(1);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // joined, first answers in
  int64_t polls0 = requests(*c, "/agent/v1/assignments"), beats0 = requests(*c, "/agent/v1/heartbeat");
  std::this_thread::sleep_for(std::chrono::seconds(10));
  int64_t polls = requests(*c, "/agent/v1/assignments") - polls0, beats = requests(*c, "/agent/v1/heartbeat") - beats0;
  std::printf("[ figures ] an idle agent in 10 s: %lld assignment polls, %lld heartbeats (polling every 500 ms: 20 + 2)\n",
              (long long)polls, (long long)beats);
  EXPECT_LE(polls, 1);  // one long-poll at most: the server holds each for 25 s
  EXPECT_LE(beats, 3);  // one every 5 s
  EXPECT_GE(beats, 1);
  // And it still works: a new instance runs (and is stopped: its process outlives the agent).
  json inst = p->post("/v1/compute/instances", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 1},
                                                {"command", "sleep 600"}}, 201);
  std::string path = "/v1/compute/instances/" + inst["id"].get<std::string>();
  wait_phase(path, "running");
  p->post(path + "/stop", {{"grace_period_seconds", 1}});
  wait_phase(path, "stopped");
}

TEST_F(Longpoll, HoldsWakesOnChangeNotOnOwnReportsAndSupersedes) {
  auto [node, key] = join_node("node-x");
  std::string url = srv.url();

  // No `after`: at once, with a version.
  Answer first = poll(url, key, "?wait=5");
  ASSERT_EQ(first.status, 200u) << first.body.dump();
  ASSERT_TRUE(first.body["version"].is_string());
  std::string v0 = first.body["version"];
  EXPECT_LT(first.ms, 1000);
  EXPECT_EQ(first.body["data"].size(), 0u);

  // Nothing changes: held for the wait, then the same list (and nothing new to act on).
  Answer same = poll(url, key, "?wait=1&after=" + v0);
  ASSERT_EQ(same.status, 200u) << same.body.dump();
  EXPECT_GE(same.ms, 900);
  EXPECT_LT(same.ms, 3000);
  EXPECT_EQ(same.body["data"].size(), 0u);

  // An unknown or foreign version: answered at once when the list differs from it... here it
  // matches nothing, so at once.
  Answer foreign = poll(url, key, "?wait=5&after=1.2.3");
  EXPECT_EQ(foreign.status, 200u);
  EXPECT_LT(foreign.ms, 1000);

  // A placement wakes a held request at once.
  auto held = poll_async(url, key, "?wait=20&after=" + v0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto t0 = Clock::now();
  json inst = p->post("/v1/compute/instances", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 1},
                                                {"command", "sleep 600"}}, 201);
  Answer woken = held.get();
  int64_t woke_ms = ms_since(t0);
  ASSERT_EQ(woken.status, 200u) << woken.body.dump();
  ASSERT_EQ(woken.body["data"].size(), 1u) << woken.body.dump();
  EXPECT_LT(woke_ms, 1500);  // the scheduler's round (200 ms) plus moments
  std::string asg = woken.body["data"][0]["id"];
  std::string v1 = woken.body["version"];
  EXPECT_NE(v1, v0);

  // The node's own report (phase running) changes nothing it acts on: the request stays held.
  auto held2 = poll_async(url, key, "?wait=2&after=" + v1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto rep = c->request("POST", "/agent/v1/assignments/" + asg + "/status", dump_json({{"phase", "running"}}),
                        {{"authorization", "Bearer " + key}, {"content-type", "application/json"}});
  ASSERT_EQ(rep.status, 200u) << rep.body;
  Answer after_report = held2.get();
  ASSERT_EQ(after_report.status, 200u);
  EXPECT_GE(after_report.ms, 1800) << "woken by its own report";
  EXPECT_EQ(after_report.body["data"][0]["phase"], "running");  // the answer is the current list
  std::string v2 = after_report.body["version"];

  // A stop wakes it.
  auto held3 = poll_async(url, key, "?wait=20&after=" + v2);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  p->post("/v1/compute/instances/" + inst["id"].get<std::string>() + "/stop", json::object());
  Answer stopped = held3.get();
  ASSERT_EQ(stopped.status, 200u);
  EXPECT_LT(stopped.ms, 1500);
  EXPECT_EQ(stopped.body["data"][0]["desired"], "stop");
  std::string v3 = stopped.body["version"];

  // One held request per node: a newer one supersedes the older (409), and is held itself.
  auto older = poll_async(url, key, "?wait=20&after=" + v3);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto newer = poll_async(url, key, "?wait=1&after=" + v3);
  Answer o = older.get();
  EXPECT_EQ(o.status, 409u) << o.body.dump();
  EXPECT_EQ(o.body["error"]["code"], "superseded");
  EXPECT_LT(o.ms, 1500);
  Answer n = newer.get();
  EXPECT_EQ(n.status, 200u);
  EXPECT_GE(n.ms, 900);

  // Bad waits.
  for (const std::string& q : std::vector<std::string>{"?wait=61&after=" + v3, "?wait=-1", "?wait=x", "?wait=1.5"}) {
    Answer bad = poll(url, key, q);
    EXPECT_EQ(bad.status, 400u) << q;
    EXPECT_EQ(bad.body["error"]["param"], "wait") << q;
  }
  // Project keys cannot poll.
  auto r = c->request("GET", "/agent/v1/assignments?wait=1", "", {{"authorization", "Bearer " + tenant.project_key}});
  EXPECT_EQ(r.status, 403u);
}

TEST_F(Longpoll, HeldRequestDoesNotHoldUpAGracefulStop) {
  auto [node, key] = join_node("node-x");
  std::string v = poll(srv.url(), key, "").body["version"];
  auto held = poll_async(srv.url(), key, "?wait=30&after=" + v);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto t0 = Clock::now();
  srv.signal(SIGTERM);
  auto status = srv.wait_exit(std::chrono::seconds(10));
  ASSERT_TRUE(status.has_value()) << "the server did not stop within 10 s";
  EXPECT_LT(ms_since(t0), 3000);
  EXPECT_EQ(*status, 0);
  Answer a = held.get();
  EXPECT_EQ(a.status, 503u) << a.body.dump();
  EXPECT_EQ(a.body["error"]["code"], "shutting_down");
}

// ---- NodeSignals alone (capacity/leases.h) ----

namespace {
// What fired, seen from the test's thread.
struct Fired {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::string, NodeSignals::Why>> got;
  NodeSignals::Fire fire(const std::string& tag) {
    return [this, tag](NodeSignals::Why why) {
      std::lock_guard lk(mu);
      got.emplace_back(tag, why);
      cv.notify_all();
    };
  }
  bool wait_for(size_t n, int ms) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, std::chrono::milliseconds(ms), [&] { return got.size() >= n; });
  }
};
}  // namespace

TEST(LongpollSignals, WakesOnBumpTimesOutSupersedesAndLimits) {
  NodeSignals sig(/*max_held=*/2);
  Fired f;
  int64_t far = NodeSignals::clock_ms() + 60'000;

  // A bump of the node wakes its held request (on the signals thread); another node's does not.
  uint64_t s1 = sig.arrive("node_a");
  ASSERT_EQ(sig.hold("node_a", s1, sig.version("node_a"), far, f.fire("a1")), NodeSignals::Hold::kHeld);
  EXPECT_EQ(sig.held(), 1u);
  sig.bump("node_b");
  EXPECT_FALSE(f.wait_for(1, 100));
  sig.bump("node_a");
  ASSERT_TRUE(f.wait_for(1, 2000));
  EXPECT_EQ(f.got[0], std::make_pair(std::string("a1"), NodeSignals::Why::kChanged));
  EXPECT_EQ(sig.held(), 0u);

  // A version that moved already: not held (look again now).
  uint64_t s2 = sig.arrive("node_a");
  EXPECT_EQ(sig.hold("node_a", s2, sig.version("node_a") - 1, far, f.fire("stale")), NodeSignals::Hold::kChanged);

  // A newer request supersedes the held one (fired at once, on the caller's thread); the older
  // one cannot hold again.
  ASSERT_EQ(sig.hold("node_a", s2, sig.version("node_a"), far, f.fire("a2")), NodeSignals::Hold::kHeld);
  uint64_t s3 = sig.arrive("node_a");
  ASSERT_EQ(f.got.size(), 2u);
  EXPECT_EQ(f.got[1], std::make_pair(std::string("a2"), NodeSignals::Why::kSuperseded));
  EXPECT_EQ(sig.hold("node_a", s2, sig.version("node_a"), far, f.fire("old")), NodeSignals::Hold::kSuperseded);

  // take(): out without firing (the client went away).
  ASSERT_EQ(sig.hold("node_a", s3, sig.version("node_a"), far, f.fire("a3")), NodeSignals::Hold::kHeld);
  EXPECT_TRUE(sig.take("node_a", s3));
  EXPECT_FALSE(sig.take("node_a", s3));
  sig.bump("node_a");
  EXPECT_FALSE(f.wait_for(3, 100));

  // The deadline.
  auto t0 = Clock::now();
  uint64_t s4 = sig.arrive("node_a");
  ASSERT_EQ(sig.hold("node_a", s4, sig.version("node_a"), NodeSignals::clock_ms() + 300, f.fire("a4")),
            NodeSignals::Hold::kHeld);
  ASSERT_TRUE(f.wait_for(3, 3000));
  EXPECT_EQ(f.got[2], std::make_pair(std::string("a4"), NodeSignals::Why::kTimeout));
  EXPECT_GE(ms_since(t0), 250);

  // At most max_held in all.
  uint64_t b = sig.arrive("node_b"), c = sig.arrive("node_c"), d = sig.arrive("node_d");
  EXPECT_EQ(sig.hold("node_b", b, sig.version("node_b"), far, f.fire("b")), NodeSignals::Hold::kHeld);
  EXPECT_EQ(sig.hold("node_c", c, sig.version("node_c"), far, f.fire("c")), NodeSignals::Hold::kHeld);
  EXPECT_EQ(sig.hold("node_d", d, sig.version("node_d"), far, f.fire("d")), NodeSignals::Hold::kFull);
  EXPECT_EQ(sig.held(), 2u);
  // Destroyed with requests held: dropped without firing.
}
