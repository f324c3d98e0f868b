// Durability of a real server process:
//
//   - kill -9 in the middle of a stream of writes, restart on the same data dir: every write the
//     server acknowledged (201) is there, the audit chain verifies, and a write that got no answer
//     can be retried with its Idempotency-Key to exactly one object. A few rounds.
//   - SIGTERM while requests are in flight (one half received, slow ones in their handler, a
//     stream of writes): they complete, idle connections close at once, the exit status is 0,
//     and everything acknowledged is there after a restart.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "support/raw_http.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;

namespace {

// All of the organization's projects (archived too), id -> name, paging through the list.
std::map<std::string, std::string> all_projects(ServerProcess& srv, const std::string& key) {
  auto c = srv.client();
  Api api{*c, key, ""};
  std::map<std::string, std::string> out;
  std::string after;
  for (int page = 0; page < 1000; ++page) {
    json list = api.get("/v1/organization/projects?limit=100&include_archived=true" + (after.empty() ? "" : "&after=" + after));
    for (const auto& p : list["data"]) out[p["id"]] = p["name"];
    if (!list["has_more"].get<bool>()) break;
    after = list["last_id"];
  }
  return out;
}

void expect_audit_chain_ok(ServerProcess& srv) {
  auto c = srv.client();
  json v = Api{*c, srv.admin_key(), ""}.get("/admin/v1/audit_logs/verify");
  EXPECT_EQ(v["ok"], true) << v.dump();
}

// Writers that create projects in a loop, each create with a unique name that is also its
// Idempotency-Key, until the connection fails. What was acknowledged and what got no answer.
class Writers {
 public:
  Writers(const std::string& url, const std::string& key, const std::string& prefix, int n) {
    for (int w = 0; w < n; ++w) {
      threads_.emplace_back([this, url, key, prefix, w] {
        try {
          http::Client client(url, 10s);
          Api api{client, key, ""};
          for (int i = 0;; ++i) {
            std::string name = prefix + "-w" + std::to_string(w) + "-" + std::to_string(i);
            try {
              auto r = api.call("POST", "/v1/organization/projects", {{"name", name}}, {{"Idempotency-Key", name}});
              std::lock_guard lk(mu_);
              if (r.status != 201) {
                errors_.push_back(name + ": HTTP " + std::to_string(r.status) + " " + r.body);
                return;
              }
              json p = json::parse(r.body);
              if (p["name"] != name) errors_.push_back(name + ": acknowledged as " + p.dump());
              acked_[p["id"]] = name;
              acks_.fetch_add(1);
            } catch (const http::ConnectionError&) {
              std::lock_guard lk(mu_);
              unanswered_.push_back(name);
              return;
            }
          }
        } catch (const std::exception& e) {
          std::lock_guard lk(mu_);
          errors_.push_back(std::string("writer: ") + e.what());
        }
      });
    }
  }
  ~Writers() { join(); }

  // Waits (bounded) until n writes are acknowledged; false if that took too long.
  bool wait_acks(int n, std::chrono::seconds limit = 30s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (acks_.load() < n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }
  void join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  std::map<std::string, std::string> acked_;  // id -> name
  std::vector<std::string> unanswered_, errors_;

 private:
  std::mutex mu_;
  std::atomic<int> acks_{0};
  std::vector<std::thread> threads_;
};

// After a restart: every acknowledged project is there under its name; nothing appeared that no
// one asked for; an unanswered create, retried with its Idempotency-Key, yields exactly one.
void check_after_restart(ServerProcess& srv, const Tenant& t, const std::map<std::string, std::string>& acked,
                         const std::vector<std::string>& unanswered, const std::set<std::string>& asked) {
  auto projects = all_projects(srv, t.admin_key);
  for (const auto& [id, name] : acked) {
    auto it = projects.find(id);
    ASSERT_NE(it, projects.end()) << "acknowledged project " << id << " (" << name << ") is gone";
    EXPECT_EQ(it->second, name);
  }
  for (const auto& [id, name] : projects) {
    EXPECT_TRUE(asked.count(name) || name == "Default project" || name == "durable project")
        << "project " << id << " (" << name << ") was never asked for";
  }
  auto c = srv.client();
  Api api{*c, t.admin_key, ""};
  for (const auto& name : unanswered) {
    auto r = api.call("POST", "/v1/organization/projects", {{"name", name}}, {{"Idempotency-Key", name}});
    EXPECT_EQ(r.status, 201u) << r.body;
  }
  projects = all_projects(srv, t.admin_key);
  std::map<std::string, int> count;
  for (const auto& [id, name] : projects) ++count[name];
  for (const auto& name : unanswered) EXPECT_EQ(count[name], 1) << name;
  expect_audit_chain_ok(srv);
}

TEST(Durability, KillNineLosesNoAcknowledgedWrite) {
  ServerProcess srv;
  Tenant t;
  {
    auto c = srv.client();
    t = make_tenant(*c, srv.admin_key(), "durable");
  }
  std::map<std::string, std::string> acked;
  std::set<std::string> asked;
  std::mt19937 rng(20240611);  // fixed seed: the same kill points each run
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<std::string> unanswered;
    {
      Writers w(srv.url(), t.admin_key, "r" + std::to_string(round), 4);
      int target = 10 + int(rng() % 40);
      ASSERT_TRUE(w.wait_acks(target)) << srv.log();
      srv.kill9();  // writers are mid-request: the kill lands between, inside and after commits
      w.join();
      EXPECT_TRUE(w.errors_.empty()) << w.errors_.front();
      EXPECT_GE(w.acked_.size(), size_t(target));
      acked.insert(w.acked_.begin(), w.acked_.end());
      unanswered = w.unanswered_;
      for (const auto& [id, name] : w.acked_) asked.insert(name);
      asked.insert(unanswered.begin(), unanswered.end());
    }
    srv.start();  // same data dir
    check_after_restart(srv, t, acked, unanswered, asked);
  }
  EXPECT_EQ(srv.stop_graceful(), 0);
}

// In flight at SIGTERM: a request half received, logins busy hashing, an idle keep-alive
// connection. The first two finish, the idle one closes at once, the process exits 0.
TEST(Durability, SigtermFinishesInFlightRequests) {
  ServerProcess srv({"--threads", "4"});
  Tenant t;
  {
    auto c = srv.client();
    t = make_tenant(*c, srv.admin_key(), "durable");
  }
  // Connections opened (and used once) before the signal.
  auto open_conn = [&] {
    auto conn = std::make_unique<RawConn>(srv.url());
    conn->send(raw_request("GET", "/healthz"));
    RawResponse r = conn->read_response(5s);
    EXPECT_EQ(r.status, 200u);
    return conn;
  };
  auto half = open_conn();
  auto idle = open_conn();
  std::vector<std::unique_ptr<RawConn>> logins;
  for (int i = 0; i < 4; ++i) logins.push_back(open_conn());

  std::string body = json{{"name", "half-sent"}}.dump();
  std::string head = "POST /v1/organization/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.admin_key +
                     "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  ASSERT_TRUE(half->send(head + body.substr(0, 5)));
  std::string login = json{{"email", t.owner_email}, {"password", t.owner_password}}.dump();
  for (auto& l : logins) {
    ASSERT_TRUE(l->send(raw_request("POST", "/v1/auth/login", login, {{"Content-Type", "application/json"}})));
  }

  srv.signal(SIGTERM);
  // Once the server stops accepting, the signal has been taken.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (RawConn::can_connect(srv.url()) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(2ms);
  ASSERT_FALSE(RawConn::can_connect(srv.url())) << "the server still accepts connections 5 s after SIGTERM";

  EXPECT_TRUE(idle->wait_closed(2s)) << "an idle keep-alive connection must not hold the shutdown";

  ASSERT_TRUE(half->send(body.substr(5)));
  RawResponse created = half->read_response(10s);
  ASSERT_TRUE(created.got_response) << "the half-received request was dropped at shutdown";
  EXPECT_EQ(created.status, 201u) << created.body;
  EXPECT_EQ(created.header("connection"), "close");
  std::string project_id = json::parse(created.body)["id"];

  std::vector<std::string> tokens;
  for (auto& l : logins) {
    RawResponse r = l->read_response(10s);
    ASSERT_TRUE(r.got_response) << "a login in progress was dropped at shutdown";
    ASSERT_EQ(r.status, 200u) << r.body;
    tokens.push_back(json::parse(r.body)["token"]);
  }

  auto status = srv.wait_exit(10s);
  ASSERT_TRUE(status.has_value()) << "the server did not exit within 10 s of SIGTERM";
  EXPECT_EQ(*status, 0) << srv.log();

  srv.start();
  auto c = srv.client();
  EXPECT_EQ(Api({*c, t.admin_key, ""}).get("/v1/organization/projects/" + project_id)["name"], "half-sent");
  for (const auto& tok : tokens) EXPECT_EQ(Api({*c, tok, ""}).call("GET", "/v1/me").status, 200u);
  expect_audit_chain_ok(srv);
  EXPECT_EQ(srv.stop_graceful(), 0) << srv.log();
}

// SIGTERM under a stream of writes: the process exits 0 promptly and keeps every write it
// acknowledged.
TEST(Durability, SigtermUnderLoadKeepsAcknowledgedWrites) {
  ServerProcess srv;
  Tenant t;
  {
    auto c = srv.client();
    t = make_tenant(*c, srv.admin_key(), "durable");
  }
  std::map<std::string, std::string> acked;
  std::vector<std::string> unanswered;
  std::set<std::string> asked;
  {
    Writers w(srv.url(), t.admin_key, "term", 6);
    ASSERT_TRUE(w.wait_acks(30));
    auto t0 = std::chrono::steady_clock::now();
    srv.signal(SIGTERM);
    auto status = srv.wait_exit(10s);
    ASSERT_TRUE(status.has_value()) << "the server did not exit within 10 s of SIGTERM";
    EXPECT_EQ(*status, 0) << srv.log();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    w.join();
    EXPECT_TRUE(w.errors_.empty()) << w.errors_.front();
    acked = w.acked_;
    unanswered = w.unanswered_;
    for (const auto& [id, name] : acked) asked.insert(name);
    asked.insert(unanswered.begin(), unanswered.end());
  }
  srv.start();
  check_after_restart(srv, t, acked, unanswered, asked);
  EXPECT_EQ(srv.stop_graceful(), 0);
}

}  // namespace
