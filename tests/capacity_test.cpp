// Capacity inventory and the node agent, against a real server and real agent processes:
// regions, zones, join tokens (single/multi-use, expiry, revocation), join with declared GPUs,
// heartbeats as leases (kill -9 an agent -> not-ready), restart without the join token,
// cordon/drain, and who may call what.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
namespace fs = std::filesystem;

namespace {

// A real `aicloud agent` process.
class AgentProcess {
 public:
  AgentProcess(const std::string& server, const std::string& work_dir, std::vector<std::string> args) {
    std::vector<std::string> argv = {aicloud_binary(), "agent", "--server", server, "--work-dir", work_dir};
    argv.insert(argv.end(), args.begin(), args.end());
    log_ = work_dir + ".log";
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
  }
  ~AgentProcess() { kill(SIGKILL); }
  int kill(int sig) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    int st = 0;
    waitpid(pid_, &st, 0);
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  // Waits for the process to exit by itself; returns its exit code.
  int wait_exit(int seconds) {
    for (int i = 0; i < seconds * 20; ++i) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
  std::string log() const {
    std::ifstream f(log_);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

// Polls GET path until pred(json) holds or the deadline passes.
template <class Pred>
json wait_for(Api& api, const std::string& path, Pred pred, int ms = 10000) {
  json last;
  for (int t = 0; t < ms; t += 50) {
    last = api.get(path);
    if (pred(last)) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "timed out waiting on " << path << ": " << last.dump();
  return last;
}

class Capacity : public ::testing::Test {
 protected:
  Capacity() : srv({"--heartbeat-interval-ms", "200"}), c(srv.client()), op{*c, srv.admin_key(), ""} {
    op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    op.post("/admin/v1/regions", {{"id", "us-east-1"}, {"jurisdiction", "US"}}, 201);
    op.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}, {"power_budget_kw", 400}}, 201);
  }
  std::string token(const json& body) { return op.post("/admin/v1/join_tokens", body, 201)["token"]; }

  ServerProcess srv;
  std::unique_ptr<http::Client> c;
  Api op;
  TempDir work;
};

TEST_F(Capacity, InventoryValidation) {
  auto r = op.call("POST", "/admin/v1/regions", {{"id", "EU West"}, {"jurisdiction", "EU"}});
  EXPECT_EQ(r.status, 400u);
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "id");
  r = op.call("POST", "/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}});
  EXPECT_EQ(r.status, 409u);
  r = op.call("POST", "/admin/v1/regions", {{"id", "ap-1"}, {"jurisdiction", "japan"}});
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "jurisdiction");
  r = op.call("POST", "/admin/v1/zones", {{"id", "x-1a"}, {"region", "nowhere"}});
  EXPECT_EQ(r.status, 400u);
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "region");
  r = op.call("POST", "/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"region", "us-east-1"}});
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "zone");
  r = op.call("POST", "/admin/v1/capacity_providers", {{"name", "upstream"}, {"type", "leased"}});
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "cost_per_gpu_hour_micros");
  json cp = op.post("/admin/v1/capacity_providers",
                    {{"name", "upstream"}, {"type", "leased"}, {"cost_per_gpu_hour_micros", 2'100'000},
                     {"term_start", 1800000000}, {"term_end", 1900000000}}, 201);
  EXPECT_EQ(cp["type"], "leased");
  EXPECT_EQ(op.get("/admin/v1/zones?region=eu-west-1")["data"].size(), 1u);
  EXPECT_EQ(op.get("/admin/v1/regions")["data"].size(), 2u);
}

TEST_F(Capacity, AgentJoinsHeartbeatsAndIsLostOnKill) {
  std::string t = token({{"zone", "eu-west-1a"}, {"max_uses", 1}});
  std::string dir = work.path() + "/n1";
  {
    AgentProcess agent(srv.url(), dir,
                       {"--join-token", t, "--name", "gpu-node-1", "--gpus", "8xH100-80GB", "--nvlink-domain",
                        "rack-1", "--label", "pool=training"});
    json nodes = wait_for(op, "/admin/v1/nodes", [](const json& j) {
      return j["data"].size() == 1 && j["data"][0]["state"] == "ready";
    });
    const json& n = nodes["data"][0];
    EXPECT_EQ(n["name"], "gpu-node-1");
    EXPECT_EQ(n["region"], "eu-west-1");  // from the join token's zone
    EXPECT_EQ(n["zone"], "eu-west-1a");
    EXPECT_EQ(n["nvlink_domain"], "rack-1");
    EXPECT_EQ(n["gpu_count"], 8);
    EXPECT_EQ(n["gpu_type"], "H100-80GB");
    EXPECT_EQ(n["gpus"][3]["uuid"], "declared-gpu-node-1-3");
    EXPECT_EQ(n["labels"]["pool"], "training");
    EXPECT_GE(n["cpu_cores"].get<int>(), 1);
    EXPECT_GT(n["memory_bytes"].get<int64_t>(), 0);
    // The credential is kept, mode 0600; the join token is used up.
    auto perms = fs::status(dir + "/node.json").permissions();
    EXPECT_EQ(perms & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
    EXPECT_EQ(op.get("/admin/v1/join_tokens")["data"][0]["status"], "used");

    agent.kill(SIGKILL);
    std::string id = n["id"];
    wait_for(op, "/admin/v1/nodes/" + id, [](const json& j) { return j["state"] == "not-ready"; });
  }
  // Restarted without a join token, it uses its credential and becomes ready again.
  AgentProcess again(srv.url(), dir, {});
  wait_for(op, "/admin/v1/nodes", [](const json& j) { return j["data"][0]["state"] == "ready"; });
  EXPECT_EQ(op.get("/admin/v1/nodes")["data"].size(), 1u);
  EXPECT_EQ(again.kill(SIGTERM), 0);
}

TEST_F(Capacity, JoinTokensAreSingleUseRevocableAndChecked) {
  std::string once = token({{"region", "us-east-1"}, {"max_uses", 1}});
  json body = {{"join_token", once}, {"name", "a"}, {"gpus", json::array()}};
  Api anon{*c, "", ""};
  anon.post("/agent/v1/join", body, 201);
  body["name"] = "b";
  auto r = anon.call("POST", "/agent/v1/join", body);
  EXPECT_EQ(r.status, 401u) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "invalid_join_token");

  json multi = op.post("/admin/v1/join_tokens", {{"region", "us-east-1"}, {"max_uses", 0}}, 201);
  body["join_token"] = multi["token"];
  anon.post("/agent/v1/join", body, 201);
  r = anon.call("POST", "/agent/v1/join", body);  // same name again
  EXPECT_EQ(r.status, 409u);
  body["name"] = "c";
  body["region"] = "eu-west-1";  // the token fixes us-east-1
  EXPECT_EQ(json::parse(anon.call("POST", "/agent/v1/join", body).body)["error"]["param"], "region");
  body.erase("region");
  body["gpus"] = {{{"model", "bad model!"}}};
  EXPECT_EQ(json::parse(anon.call("POST", "/agent/v1/join", body).body)["error"]["param"], "gpus[0].model");
  body["gpus"] = {{{"model", "H100-80GB"}}, {{"model", "A100-40GB"}}};
  EXPECT_EQ(json::parse(anon.call("POST", "/agent/v1/join", body).body)["error"]["param"], "gpus[1].model");
  body["gpus"] = json::array();
  op.del("/admin/v1/join_tokens/" + multi["id"].get<std::string>());
  EXPECT_EQ(anon.call("POST", "/agent/v1/join", body).status, 401u);

  // An agent without a credential or token says what to do.
  AgentProcess lost(srv.url(), work.path() + "/none", {});
  EXPECT_EQ(lost.wait_exit(10), 2);
  EXPECT_NE(lost.log().find("--join-token"), std::string::npos);
}

TEST_F(Capacity, CordonDrainAndAccess) {
  std::string t = token({{"region", "us-east-1"}});
  Api anon{*c, "", ""};
  json joined = anon.post("/agent/v1/join", {{"join_token", t}, {"name", "n"}, {"gpus", json::array()}}, 201);
  std::string id = joined["node"]["id"], node_key = joined["node_key"];
  Api node{*c, node_key, ""};
  EXPECT_EQ(node.post("/agent/v1/heartbeat", json::object())["state"], "ready");
  EXPECT_EQ(op.post("/admin/v1/nodes/" + id + "/cordon", json::object())["state"], "cordoned");
  EXPECT_EQ(node.post("/agent/v1/heartbeat", json::object())["state"], "cordoned");
  EXPECT_EQ(op.post("/admin/v1/nodes/" + id + "/drain", json::object())["state"], "draining");
  EXPECT_EQ(op.post("/admin/v1/nodes/" + id + "/uncordon", json::object())["state"], "ready");
  EXPECT_EQ(op.call("POST", "/admin/v1/nodes/node_nope/cordon", json::object()).status, 404u);

  // A node credential is for the agent API only; tenants cannot reach the inventory.
  EXPECT_EQ(node.call("GET", "/v1/organization/projects").status, 403u);
  EXPECT_EQ(node.call("GET", "/admin/v1/nodes").status, 403u);
  Tenant ten = make_tenant(*c, srv.admin_key(), "acme");
  Api admin{*c, ten.admin_key, ""};
  EXPECT_EQ(admin.call("GET", "/admin/v1/nodes").status, 403u);
  EXPECT_EQ(admin.call("POST", "/agent/v1/heartbeat", json::object()).status, 403u);
  EXPECT_EQ(anon.call("POST", "/agent/v1/heartbeat", json::object()).status, 401u);
}

}  // namespace
