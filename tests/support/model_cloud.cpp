#include "support/model_cloud.h"
#include "util/proc.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <thread>
#include <vector>

namespace aicloud::test {

namespace {

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

}  // namespace

ModelCloud::ModelCloud(ModelCloudOptions opts) {
  std::vector<std::string> args = {"--heartbeat-interval-ms", "500"};
  args.insert(args.end(), opts.server_args.begin(), opts.server_args.end());
  srv = std::make_unique<ServerProcess>(args);
  c = srv->client();
  Api op{*c, srv->admin_key(), ""};
  op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
  op.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
  std::string token = op.post("/admin/v1/join_tokens", {{"zone", "eu-west-1a"}, {"max_uses", 0}}, 201)["token"];
  chmod(work.path().c_str(), 0711);  // the agent runs workloads as nobody
  agent = spawn({aicloud_binary(), "agent", "--server", srv->url(), "--work-dir", work.path() + "/node-a",
                 "--join-token", token, "--name", "node-a", "--gpus", "2xH100-80GB", "--address", "127.0.0.1",
                 "--log-level", "warn"},
                work.path() + "/node-a.log");
  std::string file = work.path() + "/tiny.gguf";
  std::string cmd = aicloud_binary() + " models create-tiny --name tiny-llama --out " + file + " >/dev/null";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("create-tiny failed: " + cmd);
  op.post("/v1/models/import", {{"name", "tiny-llama"}, {"path", file}}, 201);
  a = make_tenant(*c, srv->admin_key(), "acme");
  b = make_tenant(*c, srv->admin_key(), "beta");
  Api p{*c, a.project_key, ""};
  json dep = p.post("/v1/deployments", {{"model", "tiny-llama"}, {"region", "eu-west-1"},
                                        {"resources", {{"gpu_type", "H100-80GB"}, {"gpus", 1}}},
                                        {"engine_args", {{"context_size", 512}, {"parallel", 2}}}},
                    201);
  dep_id = dep["id"];
  for (int i = 0; i < 1200; ++i) {  // up to 60 s: the agent installs the engine and fetches the model
    if (p.get("/v1/deployments/" + dep_id)["status"]["ready_replicas"] == 1) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("the deployment did not become ready: " + p.get("/v1/deployments/" + dep_id).dump() + "\n" +
                           p.get("/v1/compute/services").dump());
}

ModelCloud::~ModelCloud() {
  if (agent > 0) {
    ::kill(agent, SIGTERM);
    int st;
    waitpid(agent, &st, 0);
  }
}

http::ClientResponse ModelCloud::post(const std::string& key, const std::string& path, const json& body) {
  return c->request("POST", path, body.dump(), {{"Authorization", "Bearer " + key}, {"Content-Type", "application/json"}});
}

std::map<pid_t, int> ModelCloud::engine_processes() const {
  std::map<pid_t, int> out;
  for (pid_t pid : processes_mentioning(work.path() + "/")) {
    std::vector<std::string> argv;
    std::string cmdline = process_cmdline(pid);
    for (size_t b = 0, e; b < cmdline.size(); b = e + 1) {
      e = cmdline.find('\0', b);
      if (e == std::string::npos) e = cmdline.size();
      argv.push_back(cmdline.substr(b, e - b));
    }
    if (argv.empty() || argv[0].rfind(work.path() + "/", 0) != 0) continue;
    if (std::filesystem::path(argv[0]).filename() != "llama-server") continue;
    int port = -1;
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == "--port") port = std::atoi(argv[i + 1].c_str());
    }
    out[pid] = port;
  }
  return out;
}

json ModelCloud::chat(const std::string& text, int max_tokens) {
  return {{"model", "tiny-llama"}, {"messages", {{{"role", "user"}, {"content", text}}}}, {"max_tokens", max_tokens}};
}

}  // namespace aicloud::test
