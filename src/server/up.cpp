#include "server/up.h"

#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "agent/gpu_probe.h"
#include "agent/model_cache.h"
#include "http/client.h"
#include "models/engine.h"
#include "models/tiny.h"
#include "util/json_util.h"
#include "util/proc.h"

namespace aicloud {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// Layout of the data dir:
//   server/        the server's data dir (store, operator key admin.key, model files)
//   node/          the local agent's work dir (its credential, workloads, model cache)
//   models/        models this command made or downloaded
//   up.json        what the first run set up (organization, project, GPU type)
//   project.key    the project key (0600)
//   server.log, agent.log
constexpr const char* kRegion = "local";
constexpr const char* kZone = "local-a";
constexpr const char* kTinyName = "tiny-llama";

std::atomic<int> g_stop{0};
void on_signal(int sig) { g_stop = sig; }

struct UpError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  std::string t = s.str();
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ' || t.back() == '\r')) t.pop_back();
  return t;
}

void write_private(const fs::path& p, const std::string& text) {
  fs::path tmp = p.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) throw UpError("cannot write " + tmp.string() + ": " + std::strerror(errno));
  ::fchmod(fd, 0600);
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n <= 0) {
      ::close(fd);
      throw UpError("cannot write " + tmp.string());
    }
    off += size_t(n);
  }
  ::fsync(fd);
  ::close(fd);
  fs::rename(tmp, p);
}

std::string tail_of(const fs::path& log, size_t lines = 15) {
  std::string t = read_text(log);
  size_t at = t.size();
  for (size_t n = 0; n < lines && at > 0; ++n) {
    at = t.rfind('\n', at - 1);
    if (at == std::string::npos) {
      at = 0;
      break;
    }
  }
  return t.substr(at == 0 ? 0 : at + 1);
}

// A child of this process: its own process group (Ctrl-C reaches only `up`, which stops the
// children in order), and SIGTERM when `up` dies, so that nothing is left behind.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> copy = args;
  std::vector<char*> a;
  for (auto& s : copy) a.push_back(s.data());
  a.push_back(nullptr);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw UpError("fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    int nul = ::open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    execv(a[0], a.data());
    _exit(127);
  }
  return pid;
}

bool exited(pid_t& pid) {
  if (pid <= 0) return true;
  int st;
  if (waitpid(pid, &st, WNOHANG) == pid) {
    pid = -1;
    return true;
  }
  return false;
}

void stop_child(pid_t& pid, std::chrono::milliseconds grace) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (!exited(pid) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
  if (pid > 0) {
    ::kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    pid = -1;
  }
}

// The processes whose command line mentions dir/ : the workloads the agent started (their
// supervisors and the model engines), which outlive an agent by design.
std::vector<pid_t> processes_under(const std::string& dir) { return processes_mentioning(dir + "/"); }

void stop_workloads(const std::string& node_dir) {
  if (node_dir.size() < 8) return;
  auto pids = processes_under(node_dir);
  for (pid_t p : pids) ::kill(p, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!pids.empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
    pids = processes_under(node_dir);
  }
  for (pid_t p : pids) ::kill(p, SIGKILL);
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw UpError("cannot find this program's path (/proc/self/exe)");
  return p.string();
}

// JSON over HTTP with the operator's key, or a project's.
struct Api {
  http::Client& c;
  std::string key, org;
  http::ClientResponse call(const std::string& method, const std::string& path, const json& body = nullptr) {
    std::vector<std::pair<std::string, std::string>> h = {{"Authorization", "Bearer " + key}};
    if (!org.empty()) h.emplace_back("OpenAI-Organization", org);
    if (!body.is_null()) h.emplace_back("Content-Type", "application/json");
    return c.request(method, path, body.is_null() ? "" : body.dump(), h);
  }
  json want(const std::string& method, const std::string& path, const json& body, unsigned status) {
    auto r = call(method, path, body);
    if (r.status != status) {
      std::string msg = r.body;
      try {
        msg = json::parse(r.body)["error"]["message"];
      } catch (...) {
      }
      throw UpError(method + " " + path + " failed (HTTP " + std::to_string(r.status) + "): " + msg);
    }
    return r.body.empty() ? json() : json::parse(r.body);
  }
};

// "My Model-Q4_K_M.gguf" -> "my-model-q4_k_m"
std::string model_name_from(const std::string& file_or_url) {
  std::string base = file_or_url;
  if (auto q = base.find_first_of("?#"); q != std::string::npos) base = base.substr(0, q);
  base = fs::path(base).filename().string();
  if (base.size() > 5 && base.substr(base.size() - 5) == ".gguf") base = base.substr(0, base.size() - 5);
  std::string out;
  for (char ch : base) {
    unsigned char u = static_cast<unsigned char>(ch);
    if (std::isalnum(u) || ch == '.' || ch == '_' || ch == '-') out += char(std::tolower(u));
    else if (!out.empty() && out.back() != '-') out += '-';
  }
  while (!out.empty() && (out.back() == '-' || out.back() == '.')) out.pop_back();
  while (!out.empty() && !std::isalnum(static_cast<unsigned char>(out.front()))) out.erase(0, 1);
  if (out.size() > 64) out.resize(64);
  return out.empty() ? "model" : out;
}

// Every ancestor of dir can be traversed by other users (the agent runs workloads as nobody
// when it runs as root).
bool others_can_reach(const fs::path& dir) {
  for (fs::path p = dir; !p.empty() && p != p.root_path(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || !(st.st_mode & S_IXOTH)) return false;
  }
  return true;
}

bool is_tty() { return ::isatty(1) == 1; }

void sleep_unless_stopped(std::chrono::milliseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!g_stop && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
}

class Up {
 public:
  std::string data_arg, listen, model_arg, name_arg, log_level = "warn";
  int ready_timeout_s = 600;

  int run();

 private:
  fs::path data_, server_dir_, node_dir_;
  pid_t server_ = -1, agent_ = -1;
  std::string url_, admin_key_;
  json state_ = json::object();

  void save_state() { write_private(data_ / "up.json", state_.dump(2) + "\n"); }
  void check_children();
  void start_server();
  void start_agent(Api& op);
  std::string ensure_model(Api& op);
  std::string ensure_project_key(Api& op);
  json ensure_deployment(http::Client& c, std::string& key, Api& op, const std::string& model, const std::string& path_hint);
  void wait_ready(http::Client& c, const std::string& key, const std::string& dep_id, const std::string& model);
  void shutdown();
};

void Up::check_children() {
  if (exited(server_)) {
    throw UpError("the server stopped; the end of " + (data_ / "server.log").string() + ":\n" + tail_of(data_ / "server.log"));
  }
  if (exited(agent_)) {
    throw UpError("the agent stopped; the end of " + (data_ / "agent.log").string() + ":\n" + tail_of(data_ / "agent.log"));
  }
  if (g_stop) throw UpError("");
}

void Up::start_server() {
  fs::remove(server_dir_ / "server.url");
  std::cout << "Starting the server on " << listen << " ..." << std::endl;
  server_ = spawn({self_exe(), "server", "--listen", listen, "--data-dir", server_dir_.string(), "--log-level", log_level},
                  data_ / "server.log");
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (exited(server_)) {
      throw UpError("the server did not start; the end of " + (data_ / "server.log").string() + ":\n" +
                    tail_of(data_ / "server.log"));
    }
    if (g_stop) throw UpError("");
    std::string url = read_text(server_dir_ / "server.url");
    if (!url.empty()) {
      try {
        http::Client c(url, 2s);
        if (c.request("GET", "/healthz").status == 200) {
          url_ = url;
          admin_key_ = read_text(server_dir_ / "admin.key");
          return;
        }
      } catch (const std::exception&) {
      }
    }
    std::this_thread::sleep_for(30ms);
  }
  throw UpError("the server did not answer /healthz within 30 s; see " + (data_ / "server.log").string());
}

void Up::start_agent(Api& op) {
  // The region and zone this machine is, made once.
  if (op.call("GET", std::string("/admin/v1/regions/") + kRegion).status == 404) {
    op.want("POST", "/admin/v1/regions", {{"id", kRegion}, {"jurisdiction", "LOCAL"}, {"name", "This machine"}}, 201);
  }
  if (op.call("GET", std::string("/admin/v1/zones/") + kZone).status == 404) {
    op.want("POST", "/admin/v1/zones", {{"id", kZone}, {"region", kRegion}}, 201);
  }
  std::vector<std::string> args = {self_exe(), "agent", "--server", url_, "--work-dir", node_dir_.string(),
                                   "--name", "local", "--address", "127.0.0.1", "--log-level", log_level};
  std::string gpu_desc;
  if (!fs::exists(node_dir_ / "node.json")) {
    // First start: join with a one-use token; the GPUs are the real ones (NVML), else one declared
    // device named "local" that the engine runs on the CPU.
    std::string why;
    auto real = probe_nvml(&why);
    if (real && !real->empty()) {
      state_["gpu_type"] = real->front().model;
      gpu_desc = std::to_string(real->size()) + "x " + real->front().model;
    } else {
      state_["gpu_type"] = "local";
      args.insert(args.end(), {"--gpus", "1xlocal"});
      gpu_desc = "no GPU found, the model runs on the CPU";
    }
    save_state();
    std::string token =
        op.want("POST", "/admin/v1/join_tokens",
                {{"zone", kZone}, {"max_uses", 1}, {"expires_in_seconds", 3600}, {"description", "aicloud up"}}, 201)["token"];
    args.insert(args.end(), {"--join-token", token});
  } else {
    gpu_desc = "GPU type " + state_.value("gpu_type", std::string("local"));
  }
  if (geteuid() == 0 && !others_can_reach(node_dir_)) {
    // Workloads would run as nobody, who cannot reach the data dir: run them as this user.
    args.insert(args.end(), {"--run-as", ""});
  }
  std::cout << "Starting the local agent (" << gpu_desc << ") ..." << std::endl;
  agent_ = spawn(args, data_ / "agent.log");
}

std::string Up::ensure_model(Api& op) {
  std::string name = !name_arg.empty() ? name_arg : model_arg.empty() ? kTinyName : model_name_from(model_arg);
  json found = op.want("GET", "/admin/v1/models?owner=system&name=" + name, nullptr, 200);
  if (!found["data"].empty()) {
    std::cout << "Model " << name << ": already in the catalog." << std::endl;
    return name;
  }
  fs::path models = data_ / "models";
  fs::create_directories(models);
  std::string path;
  if (model_arg.empty()) {
    std::cout << "Creating the tiny model " << name << " (random weights, for trying things out) ..." << std::endl;
    models::TinySpec spec;
    spec.name = name;
    path = (models / (name + ".gguf")).string();
    models::write_tiny_model(spec, engine::find_vocab("llama-spm"), path);
  } else if (model_arg.rfind("http://", 0) == 0 || model_arg.rfind("https://", 0) == 0) {
    path = (models / (model_name_from(model_arg) + ".gguf")).string();
    if (!fs::exists(path)) {
      std::cout << "Downloading " << model_arg << " ..." << std::endl;
      FetchOptions fo;
      auto last = std::chrono::steady_clock::now() - 1h;
      fo.progress = [&](const FetchProgress& p) {
        auto now = std::chrono::steady_clock::now();
        if (now - last < 500ms && p.done != p.total) return;
        last = now;
        std::cout << (is_tty() ? "\r  " : "  ") << (p.done >> 20) << " MiB";
        if (p.total) std::cout << " of " << (p.total >> 20) << " MiB (" << (p.done * 100 / p.total) << "%)";
        std::cout << (is_tty() ? "   " : "\n") << std::flush;
      };
      try {
        fetch_file(model_arg, path, fo);
      } catch (const FetchError& e) {
        throw UpError(std::string("could not download the model: ") + e.what() +
                      (e.partial_kept ? " (run aicloud up again to resume)" : ""));
      }
      if (is_tty()) std::cout << "\n";
    }
  } else {
    std::error_code ec;
    path = fs::absolute(model_arg).lexically_normal().string();
    if (!fs::is_regular_file(path, ec)) throw UpError("--model: no such file: " + model_arg);
  }
  std::cout << "Importing " << name << " into the catalog ..." << std::endl;
  op.want("POST", "/v1/models/import", {{"name", name}, {"path", path}}, 201);
  return name;
}

std::string Up::ensure_project_key(Api& op) {
  fs::path key_file = data_ / "project.key";
  if (state_.contains("org_id") &&
      op.call("GET", "/admin/v1/organizations/" + state_["org_id"].get<std::string>()).status == 404) {
    state_.erase("org_id");  // the server's data was reset: start over
    state_.erase("project_id");
  }
  if (!state_.contains("org_id")) {
    json org = op.want("POST", "/admin/v1/organizations", {{"name", "default"}}, 201);
    state_["org_id"] = org["id"];
    save_state();
  }
  Api org_op{op.c, op.key, state_["org_id"]};
  if (!state_.contains("project_id")) {
    json projects = org_op.want("GET", "/v1/organization/projects", nullptr, 200);
    if (projects["data"].empty()) {
      state_["project_id"] = org_op.want("POST", "/v1/organization/projects", {{"name", "Default project"}}, 201)["id"];
    } else {
      state_["project_id"] = projects["data"][0]["id"];
    }
    save_state();
  }
  std::string key = read_text(key_file);
  if (!key.empty()) {
    Api p{op.c, key, ""};
    if (p.call("GET", "/v1/deployments?limit=1").status != 401) return key;
    std::cout << "The key in " << key_file.string() << " no longer works; making a new one." << std::endl;
  }
  std::string pid = state_["project_id"];
  key = org_op.want("POST", "/v1/organization/projects/" + pid + "/api_keys", {{"name", "aicloud up"}}, 201)["value"];
  write_private(key_file, key + "\n");
  state_["new_key"] = true;
  return key;
}

json Up::ensure_deployment(http::Client& c, std::string& key, Api&, const std::string& model, const std::string&) {
  Api p{c, key, ""};
  json list = p.want("GET", "/v1/deployments?limit=100", nullptr, 200);
  json mine;
  for (const auto& d : list["data"]) {
    if (d["spec"].value("model", "") == model && mine.is_null()) {
      mine = d;
    } else if (d["status"].value("phase", "") != "deleting" && d["status"].value("phase", "") != "deleted") {
      // An earlier `aicloud up --model` of another model: it would hold the local GPU.
      std::cout << "Removing the deployment of " << d["spec"].value("model", "") << " (" << d["id"].get<std::string>()
                << ") from an earlier run ..." << std::endl;
      p.call("DELETE", "/v1/deployments/" + d["id"].get<std::string>());
    }
  }
  if (!mine.is_null()) return mine;
  json body = {{"model", model},
               {"name", model},
               {"region", kRegion},
               {"resources", {{"gpu_type", state_.value("gpu_type", std::string("local"))}, {"gpus", 1}}},
               {"min_replicas", 1},
               {"max_replicas", 1}};
  if (model_arg.empty()) body["engine_args"] = {{"context_size", 512}, {"parallel", 2}};
  std::cout << "Deploying " << model << " ..." << std::endl;
  // The node may still be joining: its GPUs are unknown until then.
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (true) {
    auto r = p.call("POST", "/v1/deployments", body);
    if (r.status == 201) return json::parse(r.body);
    if (r.status != 400 || std::chrono::steady_clock::now() > deadline) {
      throw UpError("could not deploy " + model + " (HTTP " + std::to_string(r.status) + "): " + r.body);
    }
    check_children();
    sleep_unless_stopped(250ms);
  }
}

void Up::wait_ready(http::Client& c, const std::string& key, const std::string& dep_id, const std::string& model) {
  Api p{c, key, ""};
  auto start = std::chrono::steady_clock::now();
  std::string last;
  auto last_print = start - 1h;
  while (true) {
    check_children();
    json d = p.want("GET", "/v1/deployments/" + dep_id, nullptr, 200);
    if (d["status"].value("ready_replicas", 0) >= 1) break;
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start).count();
    if (secs > ready_timeout_s) {
      throw UpError("the deployment of " + model + " was not ready after " + std::to_string(secs) +
                    " s: " + d["status"].dump() + "; see " + (data_ / "agent.log").string());
    }
    std::string what = "Waiting for " + model + " to be ready: " + d["status"].value("phase", std::string("deploying"));
    if (d["status"].contains("reason") && d["status"]["reason"].is_string()) what += " (" + d["status"]["reason"].get<std::string>() + ")";
    auto now = std::chrono::steady_clock::now();
    if (is_tty()) {
      std::cout << "\r" << what << " " << secs << " s   " << std::flush;
    } else if (what != last || now - last_print > 10s) {
      std::cout << what << " " << secs << " s" << std::endl;
      last_print = now;
    }
    last = what;
    sleep_unless_stopped(250ms);
  }
  if (is_tty() && !last.empty()) std::cout << "\n";
  // The status can be stale right after a restart (the engine from the last run is gone and the
  // agent has not said so yet): one real request through the gateway proves the model answers.
  json probe = {{"model", model}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 1}};
  while (true) {
    check_children();
    auto r = p.call("POST", "/v1/chat/completions", probe);
    if (r.status == 200) return;
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start).count();
    if (secs > ready_timeout_s || (r.status != 503 && r.status != 429 && r.status != 502)) {
      throw UpError("the model does not answer (HTTP " + std::to_string(r.status) + "): " + r.body);
    }
    sleep_unless_stopped(250ms);
  }
}

void Up::shutdown() {
  std::cout << "Stopping ..." << std::endl;
  stop_child(agent_, 10s);
  stop_workloads(node_dir_.string());  // the model engines outlive an agent by design
  stop_child(server_, 20s);
  std::cout << "Stopped." << std::endl;
}

// Quotes s for a POSIX shell inside single quotes.
std::string shq(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

int Up::run() {
  data_ = fs::absolute(data_arg).lexically_normal();
  if (data_.has_filename() == false) data_ = data_.parent_path();
  server_dir_ = data_ / "server";
  node_dir_ = data_ / "node";
  fs::create_directories(data_);
  ::chmod(data_.c_str(), 0711);  // traversable (workloads reach node/), not listable
  fs::create_directories(data_ / "models");
  ::chmod((data_ / "models").c_str(), 0700);
  try {
    std::string st = read_text(data_ / "up.json");
    if (!st.empty()) state_ = json::parse(st);
  } catch (const std::exception&) {
    state_ = json::object();
  }
  state_.erase("new_key");

  try {
    start_server();
    http::Client c(url_, 600s);
    Api op{c, admin_key_, ""};
    start_agent(op);
    std::string model = ensure_model(op);
    check_children();
    std::string key = ensure_project_key(op);
    bool new_key = state_.value("new_key", false);
    state_.erase("new_key");
    json dep = ensure_deployment(c, key, op, model, "");
    wait_ready(c, key, dep["id"], model);

    std::string base = url_ + "/v1";
    std::string key_file = (fs::path(data_arg) / "project.key").lexically_normal().string();
    json req = {{"model", model}, {"messages", {{{"role", "user"}, {"content", "Say hello"}}}}, {"max_tokens", 32}};
    std::ostringstream o;
    o << "\naicloud is ready: " << model << " is served at " << base << "\n\n"
      << "  Base URL:     " << base << "\n"
      << "  Project key:  " << key << (new_key ? "  (new; saved in " : "  (from ") << key_file << ")\n"
      << "  Model:        " << model << "\n"
      << "  Operator key: " << (fs::path(data_arg) / "server" / "admin.key").lexically_normal().string() << "\n"
      << "  Logs:         " << (fs::path(data_arg) / "server.log").lexically_normal().string() << ", "
      << (fs::path(data_arg) / "agent.log").lexically_normal().string() << "\n\n"
      << "Try it with curl:\n\n"
      << "curl -s " << base << "/chat/completions \\\n"
      << "  -H " << shq("Authorization: Bearer " + key) << " \\\n"
      << "  -H 'Content-Type: application/json' \\\n"
      << "  -d " << shq(req.dump()) << "\n\n"
      << "Or with the OpenAI SDK for Node (npm install openai):\n\n"
      << "node --input-type=module -e '\n"
      << "import OpenAI from \"openai\";\n"
      << "const client = new OpenAI({ baseURL: \"" << base << "\", apiKey: \"" << key << "\" });\n"
      << "const r = await client.chat.completions.create({ model: \"" << model
      << "\", messages: [{ role: \"user\", content: \"Say hello\" }], max_tokens: 32 });\n"
      << "console.log(r.choices[0].message.content);\n"
      << "'\n\n"
      << "Stop it with Ctrl-C.\n";
    std::cout << o.str() << std::flush;

    while (!g_stop) {
      if (exited(server_)) {
        std::cerr << "error: the server stopped; the end of its log:\n" << tail_of(data_ / "server.log") << "\n";
        shutdown();
        return 1;
      }
      if (exited(agent_)) {
        std::cerr << "error: the agent stopped; the end of its log:\n" << tail_of(data_ / "agent.log") << "\n";
        shutdown();
        return 1;
      }
      std::this_thread::sleep_for(100ms);
    }
    if (is_tty()) std::cout << "\n";
    shutdown();
    return 0;
  } catch (const std::exception& e) {
    if (is_tty()) std::cout << "\n";
    bool interrupted = g_stop != 0 && std::string(e.what()).empty();
    if (!interrupted) std::cerr << "error: " << e.what() << "\n";
    shutdown();
    return interrupted ? 0 : 1;
  }
}

}  // namespace

int up_command(int argc, char** argv) {
  Up up;
  up.data_arg = ".aicloud";
  up.listen = "127.0.0.1:8080";
  CLI::App cli{"Start the single-machine cloud: the server, a local agent and a model, ready to use", "aicloud up"};
  cli.add_option("--data-dir", up.data_arg, "where everything is kept (a second run reuses it)")->capture_default_str();
  cli.add_option("--listen", up.listen, "address:port of the server (port 0 picks a free one)")->capture_default_str();
  cli.add_option("--model", up.model_arg,
                 "a GGUF model to serve: a file, or an http(s) URL to download (default: a tiny test model)");
  cli.add_option("--name", up.name_arg, "the model's name in the API (default: from the file name)");
  cli.add_option("--log-level", up.log_level, "the server's and agent's log level (their logs are in the data dir)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
  cli.add_option("--ready-timeout", up.ready_timeout_s, "seconds to wait for the model to be ready")->capture_default_str();
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  try {
    return up.run();
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace aicloud
