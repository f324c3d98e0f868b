// Workload lifecycles end to end with real processes: a server on a fixed port (so that it can
// be killed and started again where its agents look for it), real agents, real services with a
// real HTTP health endpoint (python3 -m http.server).
//
//   - a service becomes ready only once its health check passes; its endpoint serves;
//   - a service whose process dies is restarted in place, and its restarts count;
//   - a service that fails its health check failure_threshold times is restarted;
//   - exec: output streamed by offset, exit code, the instance's sandbox context, timeouts;
//   - an agent killed with SIGKILL and started again re-adopts its running instance (same
//     process, same assignment, nothing started twice);
//   - the server killed with kill -9 and started again on the same data dir: the job and the
//     instance go on, nothing lost, nothing started twice;
//   - logs follow: lines appear while a job runs.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;
namespace fs = std::filesystem;

namespace {

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
  return n;
}

pid_t spawn(std::vector<std::string> args, const std::string& log) {
  std::vector<char*> a;
  for (auto& s : args) a.push_back(s.data());
  a.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    dup2(fd, 1);
    dup2(fd, 2);
    execv(a[0], a.data());
    _exit(127);
  }
  return pid;
}

void reap(pid_t& pid, int sig) {
  if (pid <= 0) return;
  ::kill(pid, sig);
  int st;
  waitpid(pid, &st, 0);
  pid = -1;
}

// `aicloud server` on a fixed port with its own data dir, killed and started again on both.
class Server {
 public:
  explicit Server(std::string heartbeat_ms) : port_(free_port()), heartbeat_ms_(std::move(heartbeat_ms)) { start(); }
  ~Server() { reap(pid_, SIGKILL); }

  void start() {
    pid_ = spawn({aicloud_binary(), "server", "--listen", "127.0.0.1:" + std::to_string(port_), "--data-dir",
                  dir_.path(), "--log-level", "warn", "--sync", "normal", "--heartbeat-interval-ms", heartbeat_ms_},
                 dir_.path() + "/server.log");
    for (int i = 0; i < 750; ++i) {
      try {
        http::Client c(url(), std::chrono::seconds(2));
        if (c.request("GET", "/healthz").status == 200) {
          std::string key = slurp(dir_.path() + "/admin.key");
          while (!key.empty() && key.back() == '\n') key.pop_back();
          admin_key_ = key;
          return;
        }
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("the server did not start: " + slurp(dir_.path() + "/server.log"));
  }
  void kill9() { reap(pid_, SIGKILL); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& admin_key() const { return admin_key_; }

 private:
  TempDir dir_;
  int port_;
  std::string heartbeat_ms_;
  pid_t pid_ = -1;
  std::string admin_key_;
};

class Agent {
 public:
  Agent(const std::string& server, std::string dir, std::vector<std::string> args) : dir_(std::move(dir)) {
    std::vector<std::string> argv = {aicloud_binary(), "agent", "--server", server, "--work-dir", dir_, "--log-level", "warn"};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = spawn(argv, dir_ + ".log");
  }
  ~Agent() { kill(SIGKILL); }
  void kill(int sig) { reap(pid_, sig); }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
};

class Lifecycle : public ::testing::Test {
 protected:
  explicit Lifecycle(const char* heartbeat_ms = "500")
      : srv(heartbeat_ms), c(std::make_unique<http::Client>(srv.url())), op{*c, srv.admin_key(), ""} {
    chmod(work.path().c_str(), 0711);  // agents run workloads as nobody
    op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    op.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
    join_token = op.post("/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"max_uses", 0}}, 201)["token"];
    tenant = make_tenant(*c, srv.admin_key(), "acme");
  }

  std::unique_ptr<Agent> agent(const std::string& name, bool join = true) {
    std::vector<std::string> args = {"--gpus", "8xH100-80GB", "--address", "127.0.0.1"};
    if (join) args.insert(args.end(), {"--join-token", join_token, "--name", name});
    return std::make_unique<Agent>(srv.url(), work.path() + "/" + name, args);
  }
  void wait_nodes_ready(size_t n) {
    for (int i = 0; i < 300; ++i) {
      json nodes = op.get("/admin/v1/nodes");
      size_t ready = 0;
      for (const auto& x : nodes["data"]) ready += x["state"] == "ready";
      if (ready == n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "nodes not ready: " << op.get("/admin/v1/nodes").dump();
  }
  // Polls path until pred holds (or fails the test after ms).
  json wait_for(Api& api, const std::string& path, const std::function<bool(const json&)>& pred, int ms = 20000) {
    json w;
    for (int t = 0; t < ms; t += 50) {
      w = api.get(path);
      if (pred(w)) return w;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "timed out waiting on " << path << ": " << w.dump();
    return w;
  }
  json wait_phase(Api& api, const std::string& path, const std::string& phase, int ms = 20000) {
    return wait_for(api, path, [&](const json& w) { return w["status"]["phase"] == phase; }, ms);
  }
  // All of a rank's log so far (from offset 0).
  std::string logs(Api& api, const std::string& path) { return api.get(path + "/logs")["text"]; }

  json service_body(int port, json health_check, const std::string& command) {
    return {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 1}, {"port", port},
            {"health_check", std::move(health_check)}, {"command", command}};
  }

  TempDir work;
  Server srv;
  std::unique_ptr<http::Client> c;
  Api op;
  std::string join_token;
  Tenant tenant;
};

TEST_F(Lifecycle, ServiceIsReadyOnlyOnceItsHealthCheckPasses) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  int port = free_port();
  // The server comes up a second after the process starts: until then the service is starting.
  json svc = p.post("/v1/compute/services",
                    service_body(port, {{"path", "/"}, {"interval_seconds", 1}},
                                 "sleep 1; echo port=$AICLOUD_PORT; exec python3 -m http.server $AICLOUD_PORT --bind 127.0.0.1"),
                    201);
  std::string path = "/v1/compute/services/" + svc["id"].get<std::string>();
  EXPECT_EQ(svc["spec"]["port"], port);
  EXPECT_EQ(svc["spec"]["health_check"]["path"], "/");
  EXPECT_EQ(svc["spec"]["health_check"]["failure_threshold"], 3);
  EXPECT_EQ(svc["status"]["phase"], "pending");
  json starting = wait_for(p, path, [](const json& w) { return w["status"]["phase"] != "pending"; });
  EXPECT_EQ(starting["status"]["phase"], "starting") << starting.dump();
  EXPECT_EQ(starting["status"]["ready"], false);
  json ready = wait_phase(p, path, "running");
  EXPECT_EQ(ready["status"]["ready"], true) << ready.dump();
  EXPECT_EQ(ready["status"]["endpoint"], "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(ready["status"]["restarts"], 0);
  EXPECT_EQ(ready["status"]["health"]["healthy"], true);
  // The endpoint really serves.
  http::Client direct("http://127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(direct.request("GET", "/").status, 200u);
  EXPECT_NE(logs(p, path).find("port=" + std::to_string(port)), std::string::npos);

  // Delete needs it stopped; stopping ends the process (and its port).
  EXPECT_EQ(p.call("DELETE", path).status, 409u);
  json stopping = p.post(path + "/stop", {{"grace_period_seconds", 2}});
  EXPECT_EQ(stopping["status"]["ready"], false);
  wait_phase(p, path, "stopped");
  json del = p.del(path);
  EXPECT_EQ(del, json({{"id", svc["id"]}, {"object", "compute.service"}, {"deleted", true}}));
  EXPECT_EQ(p.call("GET", path).status, 404u);
}

TEST_F(Lifecycle, ServiceWhoseProcessDiesIsRestartedInPlace) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  int port = free_port();
  json svc = p.post("/v1/compute/services",
                    service_body(port, {{"path", "/"}, {"interval_seconds", 1}},
                                 "echo started; echo $$ > pid; exec python3 -m http.server $AICLOUD_PORT --bind 127.0.0.1"),
                    201);
  std::string path = "/v1/compute/services/" + svc["id"].get<std::string>();
  json ready = wait_phase(p, path, "running");
  std::string asg = ready["status"]["placements"][0]["assignment_id"];
  std::string pid_file = a->dir() + "/workloads/" + asg + "/work/pid";
  pid_t pid = std::atoi(slurp(pid_file).c_str());
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);  // the service's process dies
  json restarted = wait_for(p, path, [](const json& w) {
    return w["status"]["restarts"] == 1 && w["status"]["phase"] == "running";
  });
  EXPECT_EQ(restarted["status"]["ready"], true);
  EXPECT_EQ(restarted["status"]["attempts"], 1);  // in place: same placement, same assignment
  EXPECT_EQ(restarted["status"]["placements"][0]["assignment_id"], asg);
  pid_t again = std::atoi(slurp(pid_file).c_str());
  EXPECT_NE(again, pid);
  EXPECT_EQ(::kill(again, 0), 0);
  std::string text = logs(p, path);
  EXPECT_EQ(count(text, "started\n"), 2u) << text;
  EXPECT_NE(text.find("[aicloud] exited with code 137; starting again in 1 s (restart 1)"), std::string::npos) << text;
}

TEST_F(Lifecycle, ServiceFailingItsHealthCheckIsRestarted) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  int port = free_port();
  // Healthy while the file `ok` exists; it goes 2 s after each start.
  json svc = p.post("/v1/compute/services",
                    service_body(port, {{"path", "/ok"}, {"interval_seconds", 1}, {"failure_threshold", 2}},
                                 "touch ok; (sleep 2; rm -f ok) & exec python3 -m http.server $AICLOUD_PORT --bind 127.0.0.1"),
                    201);
  std::string path = "/v1/compute/services/" + svc["id"].get<std::string>();
  wait_phase(p, path, "running");
  json unhealthy = wait_for(p, path, [](const json& w) { return w["status"]["phase"] == "starting"; });
  EXPECT_EQ(unhealthy["status"]["ready"], false);
  EXPECT_NE(unhealthy["status"]["reason"].get<std::string>().find("health check"), std::string::npos) << unhealthy.dump();
  json restarted = wait_for(p, path, [](const json& w) {
    return w["status"]["restarts"].is_number() && w["status"]["restarts"] >= 1 && w["status"]["phase"] == "running";
  });
  EXPECT_EQ(restarted["status"]["attempts"], 1);
  std::string text = logs(p, path);
  EXPECT_NE(text.find("[aicloud] restarting: the health check failed 2 times in a row"), std::string::npos) << text;
  p.post(path + "/stop", {{"grace_period_seconds", 1}});
  wait_phase(p, path, "stopped");
}

TEST_F(Lifecycle, ExecStreamsOutputAndExitCodeInTheInstancesContext) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json inst = p.post("/v1/compute/instances",
                     {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 2}, {"env", {{"GREETING", "hello"}}}},
                     201);
  std::string path = "/v1/compute/instances/" + inst["id"].get<std::string>();
  json running = wait_phase(p, path, "running");
  std::string asg = running["status"]["placements"][0]["assignment_id"];

  json e = p.post(path + "/exec", {{"command", "echo $GREETING; echo cuda=$CUDA_VISIBLE_DEVICES; pwd; id -un; exit 7"}}, 201);
  EXPECT_EQ(e["object"], "compute.exec");
  EXPECT_EQ(e["id"].get<std::string>().rfind("exec_", 0), 0u);
  EXPECT_EQ(e["instance_id"], inst["id"]);
  EXPECT_EQ(e["command"], json({"sh", "-c", "echo $GREETING; echo cuda=$CUDA_VISIBLE_DEVICES; pwd; id -un; exit 7"}));
  EXPECT_EQ(e["status"], "pending");
  EXPECT_TRUE(e["exit_code"].is_null());
  EXPECT_EQ(e["output"], "");
  EXPECT_EQ(e["next_offset"], 0);
  EXPECT_TRUE(e["created_at"].is_number());
  std::string epath = path + "/exec/" + e["id"].get<std::string>();
  json done = wait_for(p, epath, [](const json& x) { return x["status"] == "exited"; });
  EXPECT_EQ(done["exit_code"], 7);
  std::string out = done["output"];
  EXPECT_NE(out.find("hello\n"), std::string::npos) << out;
  EXPECT_NE(out.find("cuda=0,1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("/workloads/" + asg + "/work\n"), std::string::npos) << out;  // the instance's work dir
  EXPECT_NE(out.find("nobody\n"), std::string::npos) << out;
  EXPECT_EQ(done["next_offset"], int64_t(out.size()));
  EXPECT_EQ(p.get(epath + "?offset=" + std::to_string(out.size()))["output"], "");
  EXPECT_EQ(p.get(epath + "?offset=6")["output"], out.substr(6));

  // Streaming: poll from next_offset while it runs; the pieces add up to the whole, in order.
  json s = p.post(path + "/exec", {{"command", {"sh", "-c", "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.3; done"}}}, 201);
  std::string spath = path + "/exec/" + s["id"].get<std::string>();
  std::string streamed;
  int64_t offset = 0;
  bool saw_partial = false;
  for (int i = 0; i < 400; ++i) {
    json x = p.get(spath + "?offset=" + std::to_string(offset));
    streamed += x["output"].get<std::string>();
    offset = x["next_offset"];
    if (x["status"] == "running" && !streamed.empty()) saw_partial = true;
    if (x["status"] == "exited") {
      EXPECT_EQ(x["exit_code"], 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(saw_partial) << "no output arrived before the command ended";
  EXPECT_EQ(streamed, "line-1\nline-2\nline-3\nline-4\nline-5\nline-6\n");

  // A timeout kills it: exit code 124.
  json t = p.post(path + "/exec", {{"command", "sleep 30"}, {"timeout_seconds", 1}}, 201);
  json timed = wait_for(p, path + "/exec/" + t["id"].get<std::string>(),
                        [](const json& x) { return x["status"] == "exited"; }, 10000);
  EXPECT_EQ(timed["exit_code"], 124);
  EXPECT_EQ(timed["timed_out"], true);

  // Not running: 409. Unknown exec: 404. Another organization: 404.
  EXPECT_EQ(p.call("GET", path + "/exec/exec_nosuchthing000000000000").status, 404u);
  Tenant other = make_tenant(*c, srv.admin_key(), "globex");
  Api o{*c, other.project_key, ""};
  EXPECT_EQ(o.call("GET", epath).status, 404u);
  EXPECT_EQ(o.call("POST", path + "/exec", {{"command", "true"}}).status, 404u);
  p.post(path + "/stop", {{"grace_period_seconds", 1}});
  wait_phase(p, path, "stopped");
  auto r = p.call("POST", path + "/exec", {{"command", "true"}});
  EXPECT_EQ(r.status, 409u) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "instance_not_running");
}

// The restarted agent must beat before the node's lease (3 missed beats) runs out. Under the
// sanitizers on a loaded machine an agent took longer than the 1.5 s that 500 ms beats allow to
// start, and the node was lost: this test's server expects a beat every second (a 3 s lease).
class LifecycleRestart : public Lifecycle {
 protected:
  LifecycleRestart() : Lifecycle("1000") {}
};

TEST_F(LifecycleRestart, AgentRestartReadoptsItsRunningInstance) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json inst = p.post("/v1/compute/instances",
                     {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 1},
                      {"command", "echo started pid=$$; while true; do sleep 0.2; done"}},
                     201);
  std::string path = "/v1/compute/instances/" + inst["id"].get<std::string>();
  json running = wait_phase(p, path, "running");
  std::string asg = running["status"]["placements"][0]["assignment_id"];
  std::string wl = a->dir() + "/workloads";
  pid_t pgid = std::atoi(slurp(wl + "/" + asg + "/pgid").c_str());
  ASSERT_GT(pgid, 0);
  wait_for(p, path + "/logs", [](const json& l) { return !l["text"].get<std::string>().empty(); });

  a->kill(SIGKILL);  // the agent dies; its workloads do not
  ASSERT_EQ(::kill(-pgid, 0), 0);
  auto again = agent("node-a", /*join=*/false);  // the same work dir: its credential, its workloads
  std::this_thread::sleep_for(std::chrono::milliseconds(2000));  // a few polls and beats
  json after = p.get(path);
  EXPECT_EQ(after["status"]["phase"], "running") << after.dump();
  EXPECT_EQ(after["status"]["attempts"], 1);
  EXPECT_EQ(after["status"]["placements"][0]["assignment_id"], asg);
  EXPECT_EQ(::kill(-pgid, 0), 0) << "the instance's process group is gone";
  EXPECT_EQ(std::atoi(slurp(wl + "/" + asg + "/pgid").c_str()), pgid);  // the same process
  size_t dirs = 0;
  for (const auto& e : fs::directory_iterator(wl)) dirs += e.is_directory();
  EXPECT_EQ(dirs, 1u);
  EXPECT_EQ(count(logs(p, path), "started pid="), 1u);
  json nodes = op.get("/admin/v1/nodes");
  ASSERT_EQ(nodes["data"].size(), 1u);  // no second node joined
  EXPECT_EQ(nodes["data"][0]["state"], "ready");

  // The new agent manages it: exec runs in it, stop ends it.
  json e = p.post(path + "/exec", {{"command", "echo re-adopted"}}, 201);
  json done = wait_for(p, path + "/exec/" + e["id"].get<std::string>(), [](const json& x) { return x["status"] == "exited"; });
  EXPECT_EQ(done["output"], "re-adopted\n");
  p.post(path + "/stop", {{"grace_period_seconds", 1}});
  wait_phase(p, path, "stopped");
  for (int i = 0; i < 100 && ::kill(-pgid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_NE(::kill(-pgid, 0), 0) << "the stopped instance's processes survived";
}

TEST_F(Lifecycle, ServerRestartLosesNothingAndStartsNothingTwice) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json job = p.post("/v1/compute/jobs", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 2},
                                         {"command", "echo job-start; sleep 4; echo job-end"}}, 201);
  json inst = p.post("/v1/compute/instances", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 2},
                                               {"command", "echo inst-start; while true; do sleep 0.2; done"}}, 201);
  std::string jpath = "/v1/compute/jobs/" + job["id"].get<std::string>();
  std::string ipath = "/v1/compute/instances/" + inst["id"].get<std::string>();
  json jrun = wait_phase(p, jpath, "running");
  json irun = wait_phase(p, ipath, "running");
  std::string iasg = irun["status"]["placements"][0]["assignment_id"];

  srv.kill9();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  srv.start();  // the same port and data dir; the agent reconnects

  json done = wait_phase(p, jpath, "succeeded");
  EXPECT_EQ(done["status"]["attempts"], 1);
  EXPECT_EQ(done["status"]["placements"], jrun["status"]["placements"]);
  std::string jlog = logs(p, jpath);
  EXPECT_EQ(count(jlog, "job-start"), 1u) << jlog;
  EXPECT_EQ(count(jlog, "job-end"), 1u) << jlog;
  json inow = p.get(ipath);
  EXPECT_EQ(inow["status"]["phase"], "running") << inow.dump();
  EXPECT_EQ(inow["status"]["attempts"], 1);
  EXPECT_EQ(inow["status"]["placements"][0]["assignment_id"], iasg);
  EXPECT_EQ(count(logs(p, ipath), "inst-start"), 1u);
  size_t dirs = 0;
  for (const auto& e : fs::directory_iterator(a->dir() + "/workloads")) dirs += e.is_directory();
  EXPECT_EQ(dirs, 2u);  // one per assignment: nothing started twice
  EXPECT_EQ(p.get("/v1/compute/jobs")["data"].size(), 1u);
  EXPECT_EQ(p.get("/v1/compute/instances")["data"].size(), 1u);
  EXPECT_EQ(op.get("/admin/v1/nodes")["data"][0]["state"], "ready");
}

TEST_F(Lifecycle, LogsFollowSeesLinesWhileAJobRuns) {
  auto a = agent("node-a");
  wait_nodes_ready(1);
  Api p{*c, tenant.project_key, ""};
  json job = p.post("/v1/compute/jobs", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus_per_node", 1},
                                         {"command", "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.3; done"}}, 201);
  std::string path = "/v1/compute/jobs/" + job["id"].get<std::string>();
  std::string followed;
  int64_t offset = 0;
  int pieces = 0;
  bool saw_while_running = false;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 600; ++i) {
    json l = p.get(path + "/logs?offset=" + std::to_string(offset));
    std::string text = l["text"];
    if (!text.empty()) {
      ++pieces;
      if (!l["done"].get<bool>()) saw_while_running = true;
    }
    followed += text;
    offset = l["next_offset"];
    if (l["done"].get<bool>() && text.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(saw_while_running);
  EXPECT_GE(pieces, 3) << "the lines came in one piece: not followed while running";
  EXPECT_EQ(followed, "line-1\nline-2\nline-3\nline-4\nline-5\nline-6\nline-7\nline-8\n");
  EXPECT_EQ(p.get(path)["status"]["phase"], "succeeded");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
}

}  // namespace
