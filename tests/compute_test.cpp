// Workloads end to end on one machine: a real server, real agents with declared GPUs in
// different NVLink domains, real processes. A 2-node gang job runs both ranks with the right
// environment; a spot instance is preempted, with notice, by an on-demand one; a failing job is
// retried; kill -9 an agent and its job is retried on another node; cancel; an instance stopped,
// started again and deleted; bad input (services, exec too); another organization's ids.
// Services, exec, agent and server restarts: tests/lifecycle_test.cpp.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;

namespace {

class Agent {
 public:
  Agent(const std::string& server, const std::string& dir, std::vector<std::string> args) {
    std::vector<std::string> argv = {aicloud_binary(), "agent", "--server", server, "--work-dir", dir, "--log-level", "warn"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string log = dir + ".log";
    pid_ = fork();
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
  }
  ~Agent() { kill(SIGKILL); }
  void kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int st;
    waitpid(pid_, &st, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

class Compute : public ::testing::Test {
 protected:
  Compute()
      : srv({"--heartbeat-interval-ms", "200", "--preemption-notice-ms", "2000"}),
        c(srv.client()),
        op{*c, srv.admin_key(), ""} {
    chmod(work.path().c_str(), 0711);  // agents run workloads as nobody
    op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    op.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
    join_token = op.post("/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"max_uses", 0}}, 201)["token"];
    tenant = make_tenant(*c, srv.admin_key(), "acme");
  }

  std::unique_ptr<Agent> agent(const std::string& name, const std::string& domain) {
    return std::make_unique<Agent>(srv.url(), work.path() + "/" + name,
                                   std::vector<std::string>{"--join-token", join_token, "--name", name, "--gpus",
                                                            "8xH100-80GB", "--nvlink-domain", domain, "--address",
                                                            "127.0.0.1"});
  }
  void wait_nodes_ready(size_t n) {
    for (int i = 0; i < 200; ++i) {
      json nodes = op.get("/admin/v1/nodes");
      size_t ready = 0;
      for (const auto& x : nodes["data"]) ready += x["state"] == "ready";
      if (ready == n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "nodes not ready: " << op.get("/admin/v1/nodes").dump();
  }
  json wait_phase(Api& api, const std::string& path, const std::string& phase, int ms = 20000) {
    json w;
    for (int t = 0; t < ms; t += 50) {
      w = api.get(path);
      if (w["status"]["phase"] == phase) return w;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "timed out waiting for " << phase << " on " << path << ": " << w.dump();
    return w;
  }
  // Until the workload's log has `text` (logs are shipped in chunks while it runs).
  bool wait_log(Api& api, const std::string& path, const std::string& text, int ms = 20000) {
    std::string log;
    for (int t = 0; t < ms; t += 50) {
      log = api.get(path + "/logs")["text"];
      if (log.find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "timed out waiting for '" << text << "' in the log of " << path << ": " << log;
    return false;
  }

  TempDir work;
  ServerProcess srv;
  std::unique_ptr<http::Client> c;
  Api op;
  std::string join_token;
  Tenant tenant;
};

TEST_F(Compute, GangJobRunsBothRanksWithTheirEnvironment) {
  auto a = agent("node-a", "rack-1");
  auto b = agent("node-b", "rack-2");
  wait_nodes_ready(2);
  Api p{*c, tenant.project_key, ""};
  json job = p.post("/v1/compute/jobs",
                    {{"name", "train"}, {"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"nodes", 2},
                     {"gpus_per_node", 8},
                     {"command", "echo rank=$AICLOUD_RANK world=$AICLOUD_WORLD_SIZE node_rank=$AICLOUD_NODE_RANK "
                                 "master=$AICLOUD_MASTER_ADDR:$AICLOUD_MASTER_PORT cuda=$CUDA_VISIBLE_DEVICES user=$(id -un) "
                                 "nice=$(nice)"}},
                    201);
  std::string path = "/v1/compute/jobs/" + job["id"].get<std::string>();
  EXPECT_EQ(job["status"]["phase"], "pending");
  json done = wait_phase(p, path, "succeeded");
  ASSERT_EQ(done["status"]["placements"].size(), 2u);
  EXPECT_NE(done["status"]["placements"][0]["node_id"], done["status"]["placements"][1]["node_id"]);
  EXPECT_EQ(done["status"]["exit_code"], 0);
  for (int rank = 0; rank < 2; ++rank) {
    json logs;
    for (int i = 0; i < 100; ++i) {  // the last chunk may trail the exit report by a moment
      logs = p.get(path + "/logs?rank=" + std::to_string(rank));
      if (!logs["text"].get<std::string>().empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::string text = logs["text"];
    EXPECT_NE(text.find("rank=" + std::to_string(rank) + " world=2 node_rank=" + std::to_string(rank)),
              std::string::npos) << text;
    EXPECT_NE(text.find("master=127.0.0.1:29500"), std::string::npos) << text;
    EXPECT_NE(text.find("cuda=0,1,2,3,4,5,6,7"), std::string::npos) << text;
    EXPECT_NE(text.find("user=nobody"), std::string::npos) << text;
    // The agent runs workloads 10 nice levels below itself (--workload-nice), and it runs at
    // this test's own.
    EXPECT_NE(text.find("nice=" + std::to_string(std::min(19, getpriority(PRIO_PROCESS, 0) + 10)) + "\n"), std::string::npos)
        << text;
  }
  EXPECT_EQ(p.call("GET", path + "/logs?rank=5").status, 400u);
}

TEST_F(Compute, SpotIsPreemptedWithNoticeByOnDemand) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json spot = p.post("/v1/compute/instances",
                     {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 8}, {"class", "spot"},
                      {"command", "trap 'echo notice received; exit 0' TERM; echo ready; while true; do sleep 0.1; done"}},
                     201);
  std::string spath = "/v1/compute/instances/" + spot["id"].get<std::string>();
  wait_phase(p, spath, "running");
  wait_log(p, spath, "ready");  // its trap is set: a notice now is heard
  json od = p.post("/v1/compute/instances",
                   {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 4}, {"command", "sleep 60"}}, 201);
  std::string opath = "/v1/compute/instances/" + od["id"].get<std::string>();
  json pre = wait_phase(p, spath, "preempted");
  EXPECT_NE(pre["status"]["reason"].get<std::string>().find("preempted by " + od["id"].get<std::string>()),
            std::string::npos) << pre.dump();
  wait_phase(p, opath, "running");
  wait_log(p, spath, "notice received");
  p.post(opath + "/stop", json::object());
  wait_phase(p, opath, "stopped");
}

TEST_F(Compute, FailingJobIsRetriedThenFails) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json job = p.post("/v1/compute/jobs", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 1},
                                         {"max_retries", 1}, {"command", "echo attempt; exit 3"}}, 201);
  json done = wait_phase(p, "/v1/compute/jobs/" + job["id"].get<std::string>(), "failed");
  EXPECT_EQ(done["status"]["attempts"], 2);
  EXPECT_EQ(done["status"]["exit_code"], 3);
}

TEST_F(Compute, LostNodeJobRetriesElsewhereAndCancel) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json job = p.post("/v1/compute/jobs", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 8},
                                         {"max_retries", 2}, {"command", "sleep 300"}}, 201);
  std::string path = "/v1/compute/jobs/" + job["id"].get<std::string>();
  json running = wait_phase(p, path, "running");
  std::string first = running["status"]["placements"][0]["node_id"];
  auto b = agent("node-b", "rack-2");
  wait_nodes_ready(2);
  a->kill(SIGKILL);  // its node's lease expires; the job is retried on node-b
  json again = wait_phase(p, path, "running");
  for (int i = 0; i < 200 && again["status"]["placements"][0]["node_id"] == first; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    again = wait_phase(p, path, "running");
  }
  EXPECT_NE(again["status"]["placements"][0]["node_id"], first);
  EXPECT_EQ(again["status"]["attempts"], 2);
  json cancelled = p.post(path + "/cancel", {{"grace_period_seconds", 1}});
  EXPECT_EQ(cancelled["status"]["phase"], "cancelling");
  wait_phase(p, path, "cancelled");
}

TEST_F(Compute, BadInputAndTenancy) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  auto param = [&](const json& body) {
    auto r = p.call("POST", "/v1/compute/jobs", body);
    EXPECT_EQ(r.status, 400u) << r.body;
    return json::parse(r.body)["error"]["param"];
  };
  json ok = {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 1}, {"command", "true"}};
  json b = ok; b["gpus_per_node"] = 0;
  EXPECT_EQ(param(b), "gpus_per_node");
  b = ok; b["gpus_per_node"] = 16;
  EXPECT_EQ(param(b), "gpus_per_node");
  b = ok; b["nodes"] = 5;
  EXPECT_EQ(param(b), "nodes");
  b = ok; b["gpu_type"] = "Z9000";
  EXPECT_EQ(param(b), "gpu_type");
  b = ok; b["region"] = "mars-1";
  EXPECT_EQ(param(b), "region");
  b = ok; b.erase("command");
  EXPECT_EQ(param(b), "command");
  b = ok; b["env"] = {{"AICLOUD_RANK", "9"}};
  EXPECT_EQ(param(b), "env");
  b = ok; b["class"] = "cheap";
  EXPECT_EQ(param(b), "class");
  EXPECT_EQ(p.call("POST", "/v1/compute/jobs", "{not json").status, 400u);

  json job = p.post("/v1/compute/jobs", ok, 201);
  std::string path = "/v1/compute/jobs/" + job["id"].get<std::string>();
  Tenant other = make_tenant(*c, srv.admin_key(), "globex");
  Api o{*c, other.project_key, ""};
  EXPECT_EQ(o.call("GET", path).status, 404u);
  EXPECT_EQ(o.call("POST", path + "/cancel", json::object()).status, 404u);
  EXPECT_EQ(o.get("/v1/compute/jobs")["data"].size(), 0u);
  EXPECT_EQ(p.get("/v1/compute/jobs")["data"].size(), 1u);
  // Admin keys act in a project by naming it.
  Api admin{*c, tenant.admin_key, ""};
  EXPECT_EQ(admin.call("GET", "/v1/compute/jobs").status, 403u);
  EXPECT_EQ(admin.call("GET", "/v1/compute/jobs", nullptr, {{"OpenAI-Project", tenant.project_id}}).status, 200u);
  EXPECT_EQ(admin.call("GET", "/v1/compute/jobs", nullptr, {{"OpenAI-Project", other.project_id}}).status, 404u);
  json offers = p.get("/v1/compute/offers");
  ASSERT_FALSE(offers["data"].empty());
  EXPECT_EQ(offers["data"][0]["gpu_type"], "H100-80GB");
}

TEST_F(Compute, InstanceStopStartAndDelete) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json inst = p.post("/v1/compute/instances",
                     {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 8}, {"command", "echo up; sleep 300"}},
                     201);
  std::string id = inst["id"], path = "/v1/compute/instances/" + id;
  json first = wait_phase(p, path, "running");
  std::string first_asg = first["status"]["placements"][0]["assignment_id"];
  auto start = p.call("POST", path + "/start", json::object());
  EXPECT_EQ(start.status, 409u) << start.body;
  EXPECT_EQ(json::parse(start.body)["error"]["code"], "instance_not_stopped");

  p.post(path + "/stop", {{"grace_period_seconds", 1}});
  wait_phase(p, path, "stopped");
  json restarted = p.post(path + "/start", json::object());
  EXPECT_EQ(restarted["status"]["phase"], "pending");
  json second = wait_phase(p, path, "running");
  EXPECT_EQ(second["status"]["attempts"], 2);
  EXPECT_NE(second["status"]["placements"][0]["assignment_id"], first_asg);  // placed anew
  for (int i = 0; i < 100 && p.get(path + "/logs")["text"] == ""; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(p.get(path + "/logs")["text"], "up\n");

  // Delete stops a running instance; it is gone from the API at once, and its GPUs come back.
  json del = p.del(path);
  EXPECT_EQ(del, json({{"id", id}, {"object", "compute.instance"}, {"deleted", true}}));
  EXPECT_EQ(p.call("GET", path).status, 404u);
  EXPECT_EQ(p.call("GET", path + "/logs").status, 404u);
  EXPECT_EQ(p.call("POST", path + "/start", json::object()).status, 404u);
  EXPECT_EQ(p.call("DELETE", path).status, 404u);
  EXPECT_EQ(p.get("/v1/compute/instances")["data"].size(), 0u);
  json offers;
  for (int i = 0; i < 200; ++i) {
    offers = p.get("/v1/compute/offers");
    if (offers["data"][0]["gpus_available"] == 8) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(offers["data"][0]["gpus_available"], 8) << offers.dump();

  // A job can be deleted once it ended, not before.
  json job = p.post("/v1/compute/jobs", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 1},
                                         {"command", "sleep 300"}}, 201);
  std::string jpath = "/v1/compute/jobs/" + job["id"].get<std::string>();
  auto busy = p.call("DELETE", jpath);
  EXPECT_EQ(busy.status, 409u) << busy.body;
  EXPECT_EQ(json::parse(busy.body)["error"]["code"], "workload_active");
  p.post(jpath + "/cancel", {{"grace_period_seconds", 1}});
  wait_phase(p, jpath, "cancelled");
  EXPECT_EQ(p.del(jpath)["deleted"], true);
  EXPECT_EQ(p.call("GET", jpath).status, 404u);
}

TEST_F(Compute, ServiceAndExecBadInput) {
  auto a = agent("node-a", "rack-1");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  auto param = [&](const std::string& path, const json& body) {
    auto r = p.call("POST", path, body);
    EXPECT_EQ(r.status, 400u) << r.body;
    return json::parse(r.body)["error"]["param"];
  };
  json ok = {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 1}, {"port", 8080}, {"command", "true"}};
  json b = ok; b.erase("port");
  EXPECT_EQ(param("/v1/compute/services", b), "port");
  b = ok; b["port"] = 0;
  EXPECT_EQ(param("/v1/compute/services", b), "port");
  b = ok; b["health_check"] = {{"path", "health"}};
  EXPECT_EQ(param("/v1/compute/services", b), "health_check.path");
  b = ok; b["health_check"] = {{"interval_seconds", 0}};
  EXPECT_EQ(param("/v1/compute/services", b), "health_check.interval_seconds");
  b = ok; b["health_check"] = {{"failure_threshold", "3"}};
  EXPECT_EQ(param("/v1/compute/services", b), "health_check.failure_threshold");
  b = ok; b["health_check"] = {{"bogus", 1}};
  EXPECT_EQ(param("/v1/compute/services", b), "health_check.bogus");
  b = ok; b["health_check"] = "/health";
  EXPECT_EQ(param("/v1/compute/services", b), "health_check");
  json svc = p.post("/v1/compute/services", ok, 201);
  EXPECT_EQ(svc["spec"]["health_check"], json({{"path", "/health"}, {"interval_seconds", 2}, {"timeout_seconds", 1},
                                               {"failure_threshold", 3}, {"startup_timeout_seconds", 600}}));
  EXPECT_EQ(svc["spec"]["port"], 8080);

  // Exec: the body is checked before the instance's phase; a pending instance is 409.
  json inst = p.post("/v1/compute/instances",
                     {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 8}, {"class", "spot"}}, 201);
  std::string ipath = "/v1/compute/instances/" + inst["id"].get<std::string>();
  EXPECT_EQ(param(ipath + "/exec", json::object()), "command");
  EXPECT_EQ(param(ipath + "/exec", {{"command", json::array()}}), "command");
  EXPECT_EQ(param(ipath + "/exec", {{"command", {"ls", 3}}}), "command");
  EXPECT_EQ(param(ipath + "/exec", {{"command", "true"}, {"timeout_seconds", 0}}), "timeout_seconds");
  EXPECT_EQ(param(ipath + "/exec", {{"command", "true"}, {"timeout_seconds", 3601}}), "timeout_seconds");
  EXPECT_EQ(param(ipath + "/exec", {{"command", "true"}, {"cwd", "/"}}), "cwd");
  p.post(ipath + "/stop", json::object());
  auto r = p.call("POST", ipath + "/exec", {{"command", "true"}});
  EXPECT_EQ(r.status, 409u) << r.body;
  EXPECT_EQ(p.call("GET", ipath + "/exec/exec_nosuchthing000000000000").status, 404u);
  EXPECT_EQ(p.call("GET", ipath + "/exec/exec_x?offset=-1").status, 404u);  // the instance is checked first
}

}  // namespace
