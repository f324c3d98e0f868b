// The CLI's capacity and compute commands end to end: the real binary as a subprocess against a
// real server, with a real agent (declared GPUs, real processes). The operator builds a fleet
// and joins an agent with the CLI; a tenant runs jobs and instances, follows logs, reads offers,
// asks for reservations; bad input and a missing server get a clear message and a non-zero exit.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "cli/command_kit.h"
#include "cli/errors.h"
#include "support/server_process.h"

using namespace aicloud;
using namespace aicloud::test;

extern char** environ;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs `aicloud args...` with the parent's environment minus AICLOUD_* and HOME, plus `env`.
Result run_aicloud(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
  TempDir io;
  std::string out = io.path() + "/out", err = io.path() + "/err";
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    if (kv.rfind("AICLOUD_", 0) != 0 && kv.rfind("HOME=", 0) != 0) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<std::string> argv_s = {aicloud_binary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  pid_t pid = fork();
  if (pid == 0) {
    int fi = ::open("/dev/null", O_RDONLY), fo = ::open(out.c_str(), O_WRONLY | O_CREAT, 0600),
        fe = ::open(err.c_str(), O_WRONLY | O_CREAT, 0600);
    dup2(fi, 0);
    dup2(fo, 1);
    dup2(fe, 2);
    std::vector<char*> argv, envp;
    for (auto& a : argv_s) argv.push_back(a.data());
    for (auto& e : envs) envp.push_back(e.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  Result r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
int lines(const std::string& s) { return int(std::count(s.begin(), s.end(), '\n')); }

std::string line_with(const std::string& text, const std::string& part) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (has(line, part)) return line;
  }
  return "";
}

// The value of a "FIELD  value" line of a one-object table.
std::string row_value(const std::string& text, const std::string& field) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + " ", 0) == 0) {
      size_t v = line.find_first_not_of(' ', field.size());
      return v == std::string::npos ? "" : line.substr(v);
    }
  }
  return "";
}

int closed_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

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
  ~Agent() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
  }

 private:
  pid_t pid_ = -1;
};

class CliCompute : public ::testing::Test {
 protected:
  CliCompute() : srv({"--heartbeat-interval-ms", "200"}), c(srv.client()), api{*c, srv.admin_key(), ""} {
    chmod(work.path().c_str(), 0711);  // agents run workloads as nobody
  }

  Result cli(const std::vector<std::string>& args, std::map<std::string, std::string> env = {}) {
    env.emplace("AICLOUD_CONFIG", home.path() + "/config.toml");
    env.emplace("HOME", home.path());
    env.emplace("AICLOUD_URL", srv.url());
    return run_aicloud(args, env);
  }
  Result op(const std::vector<std::string>& args) { return cli(args, {{"AICLOUD_API_KEY", srv.admin_key()}}); }
  Result as_tenant(const std::vector<std::string>& args) { return cli(args, {{"AICLOUD_API_KEY", tenant.project_key}}); }

  // The fleet through the HTTP API (the CLI's own fleet commands have their test): one region,
  // one zone, an unlimited join token, one agent with 8 declared H100s, and a tenant.
  void fleet() {
    api.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    api.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
    std::string token = api.post("/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"max_uses", 0}}, 201)["token"];
    join(token, "node-a");
    wait_ready(1);
    tenant = make_tenant(*c, srv.admin_key(), "acme");
  }
  void join(const std::string& token, const std::string& name) {
    agents.push_back(std::make_unique<Agent>(
        srv.url(), work.path() + "/" + name,
        std::vector<std::string>{"--join-token", token, "--name", name, "--gpus", "8xH100-80GB", "--address", "127.0.0.1"}));
  }
  // Waits, through `aicloud nodes list -o json`, until n nodes are ready.
  void wait_ready(size_t n) {
    Result r;
    for (int i = 0; i < 100; ++i) {
      r = op({"nodes", "list", "-o", "json"});
      ASSERT_EQ(r.code, 0) << r.err;
      size_t ready = 0;
      json nodes = json::parse(r.out);
      for (const auto& x : nodes["data"]) ready += x["state"] == "ready";
      if (ready == n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL() << "nodes not ready: " << r.out;
  }
  // Waits, through `aicloud NOUN get ID -o json`, for a phase.
  json wait_phase(const std::string& noun, const std::string& id, const std::string& phase) {
    json w;
    for (int i = 0; i < 150; ++i) {
      Result r = as_tenant({noun, "get", id, "-o", "json"});
      EXPECT_EQ(r.code, 0) << r.err;
      if (r.code != 0) return w;
      w = json::parse(r.out);
      if (w["status"]["phase"] == phase) return w;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "timed out waiting for " << phase << ": " << w.dump();
    return w;
  }
  TempDir work, home;
  ServerProcess srv;
  std::unique_ptr<http::Client> c;
  Api api;
  Tenant tenant;
  std::vector<std::unique_ptr<Agent>> agents;
};

}  // namespace

TEST_F(CliCompute, OperatorBuildsTheFleetAndAnAgentJoins) {
  Result r = op({"regions", "create", "eu-west-1", "--jurisdiction", "EU", "--name", "EU West"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "JURISDICTION"), "EU") << r.out;
  r = op({"regions", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "JURISDICTION") && has(line_with(r.out, "eu-west-1"), "EU West")) << r.out;
  r = op({"regions", "get", "eu-west-1", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), api.get("/admin/v1/regions/eu-west-1"));

  r = op({"zones", "create", "eu-west-1a", "--region", "eu-west-1", "--power-budget-kw", "1200"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "POWER BUDGET (kW)"), "1200") << r.out;
  r = op({"zones", "list", "--region", "eu-west-1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, "eu-west-1a"), "1200")) << r.out;

  r = op({"capacity-providers", "create", "--name", "upstream-a", "--type", "leased", "--upstream", "bigcloud",
          "--cost-per-gpu-hour", "2.35", "--term-start", "2027-01-01", "--term-end", "2030-01-01"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "COST/GPU-HOUR"), "$2.35") << r.out;
  EXPECT_EQ(row_value(r.out, "TERM END"), "2030-01-01T00:00:00Z") << r.out;
  r = op({"capacity-providers", "list", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["data"][0]["cost_per_gpu_hour_micros"], 2350000);

  // The join token's secret is shown once, on create; lists show it redacted.
  r = op({"join-tokens", "create", "--zone", "eu-west-1a", "--max-uses", "0", "--expires-in", "2h"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string token = row_value(r.out, "SECRET");
  ASSERT_EQ(token.rfind("ajt-", 0), 0u) << r.out;
  EXPECT_TRUE(has(r.err, "will not be shown again") && has(r.err, "aicloud agent --server")) << r.err;
  EXPECT_EQ(row_value(r.out, "USES"), "0/unlimited") << r.out;
  r = op({"join-tokens", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(has(r.out, token)) << r.out;
  EXPECT_TRUE(has(r.out, "active")) << r.out;

  join(token, "node-a");
  wait_ready(1);
  r = op({"nodes", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string header = r.out.substr(0, r.out.find('\n'));
  for (const char* h : {"ID", "NAME", "REGION", "ZONE", "GPUS", "STATE", "LAST HEARTBEAT"}) EXPECT_TRUE(has(header, h)) << header;
  std::string row = line_with(r.out, "node-a");
  EXPECT_EQ(row.find("8x H100-80GB"), header.find("GPUS")) << r.out;  // aligned columns
  EXPECT_EQ(row.find("ready"), header.find("STATE")) << r.out;
  r = op({"nodes", "list", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json nodes = json::parse(r.out);
  ASSERT_EQ(nodes["data"].size(), 1u);
  std::string node_id = nodes["data"][0]["id"];
  EXPECT_EQ(nodes["data"][0]["gpu_count"], 8);

  r = op({"nodes", "get", node_id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "NAME"), "node-a") << r.out;
  EXPECT_TRUE(has(r.out, "MODEL") && has(r.out, "UUID")) << r.out;  // the GPU table
  r = op({"nodes", "cordon", node_id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "STATE"), "cordoned") << r.out;
  r = op({"nodes", "uncordon", node_id, "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["state"], "ready");

  std::string token_id = json::parse(op({"join-tokens", "list", "-o", "json"}).out)["data"][0]["id"];
  r = op({"join-tokens", "revoke", token_id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "STATUS"), "revoked") << r.out;
}

TEST_F(CliCompute, JobLogsFollowToCompletion) {
  fleet();
  Result r = as_tenant({"jobs", "create", "--gpus-per-node", "2", "--gpu-type", "H100-80GB", "--region", "eu-west-1",
                        "--name", "count", "-o", "json", "--",
                        "for i in 1 2 3 4 5; do echo line $i rank=$AICLOUD_RANK; sleep 0.3; done"});
  ASSERT_EQ(r.code, 0) << r.err;
  json job = json::parse(r.out);
  std::string id = job["id"];
  EXPECT_EQ(job["spec"]["gpus_per_node"], 2);

  // -f from the start (the job is still pending) to the end, with every line once, in order.
  r = as_tenant({"jobs", "logs", id, "-f"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "line 1 rank=0\nline 2 rank=0\nline 3 rank=0\nline 4 rank=0\nline 5 rank=0\n") << r.err;
  EXPECT_TRUE(has(r.err, "(" + id + " succeeded)")) << r.err;

  r = as_tenant({"jobs", "get", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "PHASE"), "succeeded") << r.out;
  EXPECT_EQ(row_value(r.out, "GPUS"), "2x H100-80GB") << r.out;
  EXPECT_EQ(row_value(r.out, "EXIT CODE"), "0") << r.out;
  EXPECT_TRUE(has(line_with(r.out, "exited"), "[0,1]")) << r.out;  // the ranks table: GPU ids, phase
  r = as_tenant({"jobs", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, id), "succeeded") && has(line_with(r.out, id), "count")) << r.out;
  r = as_tenant({"jobs", "logs", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "line 5 rank=0")) << r.out;

  // A failing job: -f ends too, and the job says how it failed.
  r = as_tenant({"jobs", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "-o", "json", "--env", "X=1",
                 "--", "sh", "-c", "echo bad; exit 3"});  // a `--` right after --env still starts the command
  ASSERT_EQ(r.code, 0) << r.err;
  std::string bad = json::parse(r.out)["id"];
  EXPECT_EQ(json::parse(r.out)["spec"]["command"], json::array({"sh", "-c", "echo bad; exit 3"}));
  r = as_tenant({"jobs", "logs", bad, "--follow", "--rank", "0"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "bad\n");
  EXPECT_EQ(wait_phase("jobs", bad, "failed")["status"]["exit_code"], 3);

  // Cancel.
  r = as_tenant({"jobs", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "-o", "json", "--", "sleep 300"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string longer = json::parse(r.out)["id"];
  wait_phase("jobs", longer, "running");
  r = as_tenant({"jobs", "delete", longer});  // a running job must be cancelled first
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 409") && has(r.err, "cancel")) << r.err;
  r = as_tenant({"jobs", "cancel", longer, "--grace", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "PHASE"), "cancelling") << r.out;
  wait_phase("jobs", longer, "cancelled");
  r = as_tenant({"jobs", "delete", longer});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Deleted " + longer + "\n");
}

TEST_F(CliCompute, InstancesCreateStopAndOffers) {
  fleet();
  Result r = as_tenant({"offers"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string header = r.out.substr(0, r.out.find('\n'));
  for (const char* h : {"GPU TYPE", "REGION", "CLASS", "AVAILABLE"}) EXPECT_TRUE(has(header, h)) << header;
  EXPECT_TRUE(has(line_with(r.out, "on_demand"), "8/8") && has(line_with(r.out, "spot"), "eu-west-1")) << r.out;

  r = as_tenant({"instances", "create", "--gpus", "2", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--class",
                 "spot", "--name", "dev", "--env", "FOO=bar baz", "--env", "EMPTY=", "--",
                 "echo foo=$FOO cuda=$CUDA_VISIBLE_DEVICES; sleep 600"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string id = row_value(r.out, "ID");
  ASSERT_EQ(id.rfind("inst_", 0), 0u) << r.out;
  EXPECT_EQ(row_value(r.out, "CLASS"), "spot") << r.out;
  EXPECT_EQ(row_value(r.out, "GPUS"), "2x H100-80GB") << r.out;
  EXPECT_EQ(row_value(r.out, "ENV"), "EMPTY= FOO=bar baz") << r.out;
  EXPECT_EQ(row_value(r.out, "COMMAND"), "echo foo=$FOO cuda=$CUDA_VISIBLE_DEVICES; sleep 600") << r.out;

  wait_phase("instances", id, "running");
  r = as_tenant({"offers", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json offers = json::parse(r.out);
  for (const auto& o : offers["data"]) EXPECT_EQ(o["gpus_available"], 6) << r.out;
  std::string text;
  for (int i = 0; i < 100 && !has(text, "foo="); ++i) {
    r = as_tenant({"instances", "logs", id});
    ASSERT_EQ(r.code, 0) << r.err;
    text = r.out;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(has(text, "foo=bar baz cuda=0,1")) << text;
  r = as_tenant({"instances", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, id), "running") && has(line_with(r.out, id), "dev")) << r.out;

  // exec streams the command's output and exits with its exit code.
  r = as_tenant({"instances", "exec", id, "--", "sh", "-c", "echo in=$FOO; sleep 0.5; echo err >&2; exit 7"});
  EXPECT_EQ(r.code, 7) << r.out << r.err;
  EXPECT_TRUE(has(r.out, "in=bar baz\n") && has(r.out, "err\n")) << r.out;
  EXPECT_EQ(r.err, "") << r.err;
  r = as_tenant({"instances", "exec", id, "--", "echo hello from $(id -un)"});  // one argument: a shell line
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "hello from nobody\n");
  r = as_tenant({"instances", "exec", id, "-o", "json", "--", "echo", "hi"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["output"], "hi\n") << r.out;
  EXPECT_EQ(json::parse(r.out)["exit_code"], 0) << r.out;
  r = as_tenant({"instances", "exec", id, "--timeout", "1", "--", "sleep", "30"});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r.err, "timed out")) << r.err;

  r = as_tenant({"instances", "stop", id, "--grace", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(row_value(r.out, "PHASE") == "stopping" || row_value(r.out, "PHASE") == "stopped") << r.out;
  wait_phase("instances", id, "stopped");
  // logs -f of an ended instance prints what it wrote and returns.
  r = as_tenant({"instances", "logs", id, "-f"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "foo=bar baz")) << r.out;

  r = as_tenant({"instances", "exec", id, "--", "true"});  // exec needs a running instance
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 409") && has(r.err, "running")) << r.err;

  // start places it again; delete stops it first and then it is gone.
  r = as_tenant({"instances", "start", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "PHASE"), "pending") << r.out;
  wait_phase("instances", id, "running");
  r = as_tenant({"instances", "delete", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Deleted " + id + "\n");
  r = as_tenant({"instances", "get", id});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 404")) << r.err;
}

TEST_F(CliCompute, ServicesCreateAndStop) {
  fleet();
  Result r = as_tenant({"services", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--", "sleep 600"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--port")) << r.err;
  r = as_tenant({"services", "create", "--port", "18481", "--health-path", "/healthz", "--gpus", "1",
                        "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--", "sleep 600"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string id = row_value(r.out, "ID");
  ASSERT_EQ(id.rfind("svc_", 0), 0u) << r.out;
  EXPECT_EQ(row_value(r.out, "PORT"), "18481") << r.out;
  EXPECT_EQ(row_value(r.out, "HEALTH PATH"), "/healthz") << r.out;
  r = as_tenant({"services", "list", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["data"][0]["id"], id);
  r = as_tenant({"services", "stop", id, "--grace", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  wait_phase("services", id, "stopped");
}

TEST_F(CliCompute, BadInputGetsAClearMessageAndNonZeroExit) {
  fleet();
  // Bad flags: a usage error (exit 2) that names the flag, before anything is sent.
  Result r = as_tenant({"instances", "create", "--gpus", "two", "--gpu-type", "H100-80GB", "--region", "eu-west-1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--gpus")) << r.err;
  r = as_tenant({"instances", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--env", "NOEQUALS"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--env") && has(r.err, "KEY=VALUE")) << r.err;
  r = as_tenant({"instances", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--class", "cheap"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--class")) << r.err;
  r = as_tenant({"jobs", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "needs a command")) << r.err;
  r = as_tenant({"instances", "create", "--gpu-type", "H100-80GB"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--region")) << r.err;
  r = as_tenant({"reservations", "create", "--gpus", "1", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--end",
                 "2030-13-01"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--end")) << r.err;
  r = op({"join-tokens", "create", "--expires-in", "soon"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--expires-in")) << r.err;

  // The server's 400s: one line naming the field, exit 1, nothing on stdout.
  for (const auto& [args, param] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"jobs", "create", "--gpus-per-node", "16", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--", "true"},
            "gpus_per_node"},
           {{"jobs", "create", "--gpus-per-node", "0", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--", "true"},
            "gpus_per_node"},
           {{"instances", "create", "--gpu-type", "Z9000", "--region", "eu-west-1"}, "gpu_type"},
           {{"instances", "create", "--gpu-type", "H100-80GB", "--region", "mars-1"}, "region"},
           {{"instances", "create", "--gpu-type", "H100-80GB", "--region", "eu-west-1", "--env", "AICLOUD_RANK=1"}, "env"}}) {
    r = as_tenant(args);
    EXPECT_EQ(r.code, 1) << testing::PrintToString(args) << r.err;
    EXPECT_TRUE(has(r.err, "(param: " + param + ")") && has(r.err, "HTTP 400")) << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
    EXPECT_EQ(r.out, "");
  }
  r = as_tenant({"jobs", "get", "job_doesnotexist"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 404")) << r.err;

  // An admin key acts in a project only when told which: the message says how.
  r = cli({"instances", "list"}, {{"AICLOUD_API_KEY", tenant.admin_key}});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 403") && has(r.err, "--project")) << r.err;
  r = cli({"instances", "list", "--project", tenant.project_id}, {{"AICLOUD_API_KEY", tenant.admin_key}});
  EXPECT_EQ(r.code, 0) << r.err;
  r = cli({"offers"}, {{"AICLOUD_API_KEY", tenant.admin_key}, {"AICLOUD_PROJECT", tenant.project_id}});
  EXPECT_EQ(r.code, 0) << r.err;

  // A tenant is not the operator.
  r = as_tenant({"nodes", "list"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "HTTP 403") || has(r.err, "HTTP 401")) << r.err;
}

TEST_F(CliCompute, ReservationsAndQuotas) {
  fleet();
  Result r = as_tenant({"reservations", "create", "--gpus", "4", "--gpu-type", "H100-80GB", "--region", "eu-west-1",
                        "--start", "2027-01-01", "--end", "2030-01-01", "--name", "long-term"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string id = row_value(r.out, "ID");
  ASSERT_EQ(id.rfind("resv_", 0), 0u) << r.out;
  EXPECT_EQ(row_value(r.out, "START"), "2027-01-01T00:00:00Z") << r.out;
  EXPECT_EQ(row_value(r.out, "END"), "2030-01-01T00:00:00Z") << r.out;
  EXPECT_EQ(row_value(r.out, "STATUS"), "pending_approval") << r.out;
  r = as_tenant({"reservations", "create", "--gpus", "2", "--gpu-type", "H100-80GB", "--region", "eu-west-1",
                 "--start", "2028-02-29", "--duration", "1y", "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  json now_one = json::parse(r.out);
  EXPECT_EQ(now_one["end_time"], aicloud::cli::parse_time("", "2029-02-28"));  // calendar years
  r = as_tenant({"reservations", "create", "--gpus", "1", "--gpu-type", "H100-80GB", "--region", "eu-west-1",
                 "--duration", "30d", "-o", "json"});  // from now
  ASSERT_EQ(r.code, 0) << r.err;
  json from_now = json::parse(r.out);
  EXPECT_EQ(from_now["end_time"].get<int64_t>() - from_now["start_time"].get<int64_t>(), 30 * 86400);
  EXPECT_NEAR(double(from_now["start_time"].get<int64_t>()), double(time(nullptr)), 60);
  r = as_tenant({"reservations", "create", "--gpus", "64", "--gpu-type", "H100-80GB", "--region", "eu-west-1",
                 "--duration", "30d"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "(param: gpus)")) << r.err;

  // The operator sees every organization's, approves one and rejects the other.
  r = op({"reservations", "list", "--status", "pending_approval"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(r.out, id) && has(r.out, now_one["id"].get<std::string>())) << r.out;
  r = op({"reservations", "approve", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "STATUS"), "approved") << r.out;
  r = op({"reservations", "reject", now_one["id"].get<std::string>(), "--reason", "no"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "REJECTION REASON"), "no") << r.out;
  r = as_tenant({"reservations", "get", id, "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["status"], "approved");
  r = as_tenant({"reservations", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, id), "4x H100-80GB")) << r.out;
  r = as_tenant({"reservations", "cancel", id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "STATUS"), "cancelled") << r.out;

  // Quotas: the operator sets them for an organization (or a project of it); the tenant reads its own.
  r = op({"quotas", "set", "--max-gpus", "8"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(has(r.err, "--org")) << r.err;
  r = op({"quotas", "set", "--org", tenant.org_id, "--max-gpus", "8", "--gpu-type", "H100-80GB", "--region", "eu-west-1"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string quota = row_value(r.out, "ID");
  EXPECT_EQ(row_value(r.out, "MAX GPUS"), "8") << r.out;
  r = op({"quotas", "set", "--org", tenant.org_id, "--project", tenant.project_id, "--max-gpus", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(row_value(r.out, "SCOPE"), "project " + tenant.project_id) << r.out;
  EXPECT_EQ(row_value(r.out, "GPU TYPE"), "any") << r.out;
  r = op({"quotas", "list", "--org", tenant.org_id, "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["data"].size(), 2u);
  r = as_tenant({"quotas", "list"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(has(line_with(r.out, quota), "organization " + tenant.org_id)) << r.out;
  r = op({"quotas", "delete", quota, "--org", tenant.org_id});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Deleted " + quota + "\n");
  r = op({"quotas", "set", "--org", tenant.org_id, "--max-gpus", "-1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, "(param: max_gpus)")) << r.err;
}

TEST(CliComputeNoServer, ServerDownGetsAClearMessage) {
  TempDir home;
  std::string url = "http://127.0.0.1:" + std::to_string(closed_port());
  for (std::vector<std::string> args : {std::vector<std::string>{"instances", "list"},
                                        {"nodes", "list"},
                                        {"jobs", "logs", "job_x", "-f"},
                                        {"offers"}}) {
    args.insert(args.end(), {"--url", url});
    Result r = run_aicloud(args, {{"AICLOUD_CONFIG", home.path() + "/c.toml"}});
    EXPECT_EQ(r.code, 1) << testing::PrintToString(args);
    EXPECT_TRUE(has(r.err, "cannot reach the aicloud server at " + url)) << r.err;
    EXPECT_EQ(lines(r.err), 1) << r.err;
    EXPECT_EQ(r.out, "");
  }
}

TEST(CliComputeNoServer, HelpListsTheComputeAndFleetCommands) {
  TempDir home;
  Result r = run_aicloud({"--help"}, {{"AICLOUD_CONFIG", home.path() + "/c.toml"}});
  EXPECT_EQ(r.code, 0);
  for (const char* n : {"instances", "jobs", "services", "offers", "reservations", "quotas", "regions", "zones",
                        "capacity-providers", "join-tokens", "nodes"}) {
    EXPECT_TRUE(has(r.out, n)) << n << "\n" << r.out;
  }
  r = run_aicloud({"instances", "create", "--help"}, {{"AICLOUD_CONFIG", home.path() + "/c.toml"}});
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "--gpu-type") && has(r.out, "--env") && has(r.out, "--class")) << r.out;
  r = run_aicloud({"instances", "frob"}, {{"AICLOUD_CONFIG", home.path() + "/c.toml"}});
  EXPECT_EQ(r.code, 2) << r.err;
}

TEST(CliComputeParse, TimesDurationsAndMoney) {
  using namespace aicloud::cli;
  EXPECT_EQ(parse_time("--t", "2027-01-01"), 1798761600);
  EXPECT_EQ(parse_time("--t", "2024-02-29T12:30:05Z"), 1709209805);
  EXPECT_EQ(parse_time("--t", "2024-02-29 12:30:05"), 1709209805);
  EXPECT_EQ(parse_time("--t", "2024-02-29T12:30"), 1709209800);
  EXPECT_EQ(parse_time("--t", "1798761600"), 1798761600);
  for (const char* bad : {"2023-02-29", "2027-1-1", "2027-01-01T25:00", "2027-01-01X", "tomorrow", "", "-5"}) {
    EXPECT_THROW(parse_time("--t", bad), CliError) << bad;
  }
  EXPECT_EQ(parse_duration("--d", "3600"), 3600);
  EXPECT_EQ(parse_duration("--d", "90m"), 5400);
  EXPECT_EQ(parse_duration("--d", "1y"), 365 * 86400);
  EXPECT_EQ(parse_duration("--d", "6mo"), 180 * 86400);
  for (const char* bad : {"", "y", "1.5d", "3 days", "-1d"}) EXPECT_THROW(parse_duration("--d", bad), CliError) << bad;
  EXPECT_EQ(add_duration("--d", parse_time("", "2027-01-01T06:00"), "3y"), parse_time("", "2030-01-01T06:00"));
  EXPECT_EQ(add_duration("--d", parse_time("", "2027-01-31"), "1mo"), parse_time("", "2027-02-28"));
  EXPECT_EQ(add_duration("--d", parse_time("", "2027-11-30"), "3mo"), parse_time("", "2028-02-29"));
  EXPECT_EQ(add_duration("--d", 1000, "2h"), 1000 + 7200);
  EXPECT_THROW(add_duration("--d", 0, "1yr"), CliError);
  EXPECT_EQ(parse_micros("--c", "2.35"), 2350000);
  EXPECT_EQ(parse_micros("--c", "$0.000001"), 1);
  EXPECT_EQ(parse_micros("--c", "3"), 3000000);
  for (const char* bad : {"", "2.", "1.0000001", "two", "-1"}) EXPECT_THROW(parse_micros("--c", bad), CliError) << bad;
  EXPECT_EQ(format_micros(2350000), "$2.35");
  EXPECT_EQ(format_micros(1), "$0.000001");
  EXPECT_EQ(format_command(json::array({"python", "train.py", "--lr", "1e-3 x"})), "python train.py --lr '1e-3 x'");
  EXPECT_EQ(format_command(json::array({"echo $A; exit 1"})), "echo $A; exit 1");
  EXPECT_THROW(parse_pairs("--env", {"=x"}), CliError);
  EXPECT_EQ(parse_pairs("--env", {"A=b=c"}), json({{"A", "b=c"}}));
}
