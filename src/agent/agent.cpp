#include "agent/agent.h"

#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "agent/executor.h"
#include "agent/gpu_probe.h"
#include "agent/health.h"
#include "agent/model_cache.h"
#include "models/engine.h"
#include "http/client.h"
#include "util/json_util.h"
#include "util/log.h"
#include "util/time.h"

namespace aicloud {
namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

// Sleeps up to ms, waking early on SIGTERM/SIGINT.
void sleep_interruptible(int64_t ms) {
  for (int64_t t = 0; t < ms && !g_stop; t += 50) std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

int64_t memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (f >> key >> kb >> unit) {
    if (key == "MemTotal:") return kb * 1024;
  }
  return 0;
}

struct Credential {
  std::string node_id, node_key, server;
};

std::optional<Credential> load_credential(const fs::path& file) {
  std::ifstream f(file);
  if (!f) return std::nullopt;
  std::stringstream s;
  s << f.rdbuf();
  try {
    json j = json::parse(s.str());
    return Credential{j.at("node_id"), j.at("node_key"), j.value("server", "")};
  } catch (const std::exception& e) {
    throw std::runtime_error("the node credential in " + file.string() + " is unreadable (" + e.what() +
                             "); remove it and join again with a new --join-token");
  }
}

void save_credential(const fs::path& file, const Credential& c) {
  fs::path tmp = file.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << json{{"node_id", c.node_id}, {"node_key", c.node_key}, {"server", c.server}}.dump(2) << "\n";
    f.flush();
    if (!f) throw std::runtime_error("cannot write " + tmp.string());
  }
  ::chmod(tmp.c_str(), 0600);
  fs::rename(tmp, file);  // atomic: a crash leaves the old file or the new one
}

std::string error_message(const http::ClientResponse& r) {
  try {
    return json::parse(r.body)["error"]["message"].get<std::string>();
  } catch (...) {
    return "HTTP " + std::to_string(r.status);
  }
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "aicloud" : p.string();
}

// The agent learns its assignments by long-poll (AssignmentFeed, below): the server answers as
// soon as they change, else after kWaitSeconds. Between answers the agent looks at its own
// processes every kSyncMs: exits, health, new log and exec output, each reported when it changed.
constexpr int64_t kSyncMs = 500;
constexpr int64_t kQuickMs = 50;  // while a stop or a new exec is under way
constexpr int64_t kWaitSeconds = 25;  // under the server's limit (60) and common proxies' idle timeouts
constexpr int64_t kChunk = 256 * 1024;  // the most log or exec output sent in one report

// How much of s to send now so that it ends on a whole UTF-8 character (the rest goes with the
// next chunk): a character split between two reports would be mangled into two replacements.
size_t utf8_complete(const std::string& s) {
  size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    auto ch = static_cast<unsigned char>(s[n - back]);
    if ((ch & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    size_t need = (ch & 0xE0) == 0xC0 ? 2 : (ch & 0xF0) == 0xE0 ? 3 : (ch & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

HealthCheck health_check_of(const json& a) {
  const json& hc = a["health_check"];
  HealthCheck c;
  c.port = a.value("port", 0);
  c.path = hc.value("path", "/health");
  c.interval_ms = hc.value("interval_seconds", int64_t(2)) * 1000;
  c.timeout_ms = hc.value("timeout_seconds", int64_t(1)) * 1000;
  c.failure_threshold = hc.value("failure_threshold", 3);
  c.startup_timeout_ms = hc.value("startup_timeout_seconds", int64_t(600)) * 1000;
  return c;
}

// What a model replica's command names by placeholder and only the node can resolve:
//   {engine:llama-server}  the engine binary, installed into the work dir from the engine build
//                          (so that the workload's user can run it: the build cache may sit in
//                          root's home);
//   {model:ID:SHA256}      the model file, fetched from the server into the node's model cache;
//   {port}                 the port the server allocated to this service on this node.
struct NodeFiles {
  std::string server_url, node_key, work_dir, engine_flag;

  void resolve(std::vector<std::string>& argv, int port) {
    for (auto& arg : argv) {
      if (arg == "{port}") {
        arg = std::to_string(port);
      } else if (arg.rfind("{engine:", 0) == 0 && arg.back() == '}') {
        arg = engine_binary(arg.substr(8, arg.size() - 9));
      } else if (arg.rfind("{model:", 0) == 0 && arg.back() == '}') {
        std::string v = arg.substr(7, arg.size() - 8);
        size_t colon = v.find(':');
        if (colon == std::string::npos) throw std::runtime_error("malformed model placeholder " + arg);
        fs::path cache = fs::path(work_dir) / "models";
        arg = ensure_model(server_url, node_key, v.substr(0, colon), v.substr(colon + 1), cache.string());
        make_readable(cache);
        ::chmod(arg.c_str(), 0644);
      }
    }
  }

  std::string engine_binary(const std::string& name) {
    if (name != "llama-server" && name != "llama-finetune") throw std::runtime_error("unknown engine binary " + name);
    fs::path src = engine::engine_dir(engine_flag);
    fs::path dst = fs::path(work_dir) / "engine" / src.filename();
    if (!fs::exists(dst / "bin" / name)) {
      fs::path tmp = dst.string() + ".partial";
      fs::remove_all(tmp);
      fs::create_directories(tmp.parent_path());
      try {  // hard links when the build is on the same filesystem, else a copy (43 MB)
        fs::copy(src, tmp, fs::copy_options::recursive | fs::copy_options::copy_symlinks | fs::copy_options::create_hard_links);
      } catch (const fs::filesystem_error&) {
        fs::remove_all(tmp);
        fs::copy(src, tmp, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
      }
      fs::remove_all(dst);
      fs::rename(tmp, dst);
      spdlog::info("installed the engine from {} into {}", src.string(), dst.string());
    }
    make_readable(fs::path(work_dir) / "engine");
    return (dst / "bin" / name).string();
  }

  // Directories traversable and files readable by the workload's user (who is not the agent's).
  static void make_readable(const fs::path& p) {
    std::error_code ec;
    ::chmod(p.c_str(), 0755);
    for (auto it = fs::recursive_directory_iterator(p, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      struct stat st{};
      if (::lstat(it->path().c_str(), &st) != 0 || S_ISLNK(st.st_mode)) continue;
      ::chmod(it->path().c_str(), S_ISDIR(st.st_mode) || (st.st_mode & 0100) ? 0755 : 0644);
    }
  }
};

// Reconciles this node's workloads with the server's assignments: starts what should run,
// stops what should not, restarts services that fail their health check, runs execs, and
// reports phases, exit codes, restarts, health and new log output.
struct WorkloadSync {
  http::Client& client;
  const std::vector<std::pair<std::string, std::string>>& auth;
  Executor& executor;  // workloads (assignments)
  Executor& execs;     // exec commands run inside instances
  HealthMonitor& health;
  std::string run_as;
  int nice;                                  // nice levels below the agent (SandboxSpec::nice)
  NodeFiles files;                           // the engine and models, for {engine:..}/{model:..}
  std::map<std::string, json> reported;      // assignment id -> what was last reported
  std::map<std::string, int64_t> log_sent;   // assignment id -> log bytes the server has
  std::map<std::string, int> seen_restarts;  // assignment id -> its restarts when last looked
  std::map<std::string, std::string> exec_reported;  // exec id -> status last reported
  std::map<std::string, int64_t> exec_sent;          // exec id -> output bytes the server has
  // Look again soon (kQuickMs) rather than at the next pass for a moment after a stop begins
  // or an exec starts: most processes end within moments, and their end is then reported at once.
  int64_t quick_until_ms = 0;
  std::set<std::string> stop_begun;  // assignment ids
  // Assignments reported as never started (stopped first, or could not start): not tried again
  // while the answer in hand still lists them (the server does not wake the agent for its own
  // reports: the next answer drops them).
  std::set<std::string> unstarted;
  bool hurry() const { return now_ms() < quick_until_ms; }
  void stop(const std::string& id, int64_t grace_ms) {
    executor.stop(id, grace_ms);
    if (stop_begun.insert(id).second) quick_until_ms = now_ms() + 1500;
  }

  // One pass over the latest answer of GET /agent/v1/assignments (`body`: the poller's, maybe
  // a little older than the server's state; the server's list wins at the next answer).
  void once(const json& body) {
    executor.tick();
    execs.tick();
    std::map<std::string, json> assignments;
    for (const auto& a : body["data"]) assignments[a["id"].get<std::string>()] = a;
    std::erase_if(unstarted, [&](const std::string& id) { return !assignments.count(id); });
    for (const auto& a : body["data"]) {  // in the server's order
      std::string id = a["id"];
      if (!log_sent.count(id)) log_sent[id] = a.value("log_total", int64_t(0));  // a restarted agent goes on
      if (unstarted.count(id)) continue;
      ProcessState st = executor.state(id);
      if (a.value("desired", "run") == "hold") continue;  // placed, waiting for preempted work to leave
      if (a.value("desired", "run") == "stop") {
        if (st.phase == ProcessState::kRunning) stop(id, a.value("grace_ms", int64_t(30000)));
        if (st.phase == ProcessState::kUnknown) report_unstarted(id, 128 + SIGTERM);  // stopped before it started
        continue;
      }
      if (st.phase == ProcessState::kUnknown) {
        SandboxSpec spec;
        spec.id = id;
        spec.argv = a["command"].get<std::vector<std::string>>();
        int port = 0;
        try {
          port = port_of(id, a);
          files.resolve(spec.argv, port);
        } catch (const std::exception& e) {
          spdlog::error("cannot start {}: {}", id, e.what());
          report_unstarted(id, 127);
          continue;
        }
        spec.env = a["env"].get<std::map<std::string, std::string>>();
        if (port != 0) spec.env["AICLOUD_PORT"] = std::to_string(port);
        spec.gpus = a["gpus"].get<std::vector<int>>();
        spec.memory_bytes = a.value("memory_bytes", int64_t(0));
        spec.run_as = run_as;
        spec.nice = nice;
        spec.restart_always = a.value("restart_policy", "never") == "always";
        std::string err;
        if (!executor.start(spec, &err)) {
          spdlog::error("cannot start {}: {}", id, err);
          report_unstarted(id, 126);
          continue;
        }
        spdlog::info("started {} (rank {} of {})", id, a.value("rank", 0), a.value("world_size", 1));
      }
    }
    // Report what runs and what ended; stop what the server no longer wants (no orphans).
    for (const auto& id : executor.known()) {
      ProcessState st = executor.state(id);
      auto it = assignments.find(id);
      if (it == assignments.end()) {
        health.unwatch(id);
        if (st.phase == ProcessState::kRunning) {
          stop(id, 10000);
        } else {
          executor.forget(id);
          std::error_code ec;
          fs::remove(fs::path(files.work_dir) / "ports" / id, ec);
          reported.erase(id);
          log_sent.erase(id);
          seen_restarts.erase(id);
          stop_begun.erase(id);
        }
        continue;
      }
      if (st.phase == ProcessState::kRunning) {
        check_health(id, it->second, st);
        report(id, "running", -1, st);
      } else if (st.phase == ProcessState::kExited) {
        health.unwatch(id);
        report(id, "exited", st.exit_code, st);
      }
    }
    sync_execs(body.value("execs", json::array()), assignments);
  }

  // A service's port: the one the server fixed, else one this node chose (a free one, kept in
  // the work dir so that a restarted agent finds the port its running replica listens on).
  int port_of(const std::string& id, const json& a) {
    int fixed = a.value("port", 0);
    if (fixed != 0 || !a.contains("health_check")) return fixed;
    if (int p = chosen_port(id)) return p;
    int p = pick_free_port();
    fs::create_directories(fs::path(files.work_dir) / "ports");
    std::ofstream(fs::path(files.work_dir) / "ports" / id) << p << "\n";
    return p;
  }
  int chosen_port(const std::string& id) {
    std::ifstream f(fs::path(files.work_dir) / "ports" / id);
    int p = 0;
    return (f >> p) ? p : 0;
  }
  static int pick_free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    socklen_t len = sizeof a;
    int p = 0;
    if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
      p = ntohs(a.sin_port);
    }
    if (fd >= 0) ::close(fd);
    if (p == 0) throw std::runtime_error("no free port on this node");
    return p;
  }

  // Services: probe while they should run; restart one that fails its check.
  void check_health(const std::string& id, const json& a, const ProcessState& st) {
    if (!a.contains("health_check") || !a["health_check"].is_object() || a.value("desired", "run") != "run") {
      health.unwatch(id);
      return;
    }
    HealthCheck hc = health_check_of(a);
    hc.port = port_of(id, a);
    health.watch(id, hc);
    auto seen = seen_restarts.find(id);
    if (seen == seen_restarts.end()) {
      seen_restarts[id] = st.restarts;
    } else if (seen->second != st.restarts) {  // the process exited and was started again
      seen->second = st.restarts;
      health.reset(id, "restarted; waiting for the health check");
    }
    auto hs = health.state(id);
    if (hs && hs->failing) {
      std::string why = hs->ever_healthy
                            ? "the health check failed " + std::to_string(hs->consecutive_failures) + " times in a row (" +
                                  hs->message + ")"
                            : "not healthy within startup_timeout_seconds (" + hs->message + ")";
      spdlog::warn("{}: {}; restarting it", id, why);
      executor.restart(id, why);
      health.reset(id, "restarting: " + why);
    }
  }

  // An assignment that never ran here (stopped before it started, or could not start).
  void report_unstarted(const std::string& id, int exit_code) {
    json body = {{"phase", "exited"}, {"exit_code", exit_code}};
    auto r = client.request("POST", "/agent/v1/assignments/" + id + "/status", dump_json(body), auth);
    if (r.status == 200) {
      unstarted.insert(id);
    } else {
      spdlog::warn("report {}: {}", id, error_message(r));
    }
  }

  void report(const std::string& id, std::string phase, int exit_code, const ProcessState& st) {
    int64_t total = 0, start = 0;
    std::string chunk = executor.read_log(id, log_sent[id], kChunk, &total, &start);
    bool last = start + int64_t(chunk.size()) >= total;
    // "exited" goes with the last of the output: the server stops listing an exited assignment,
    // and the agent then forgets its directory.
    if (phase == "exited" && !last) phase = "running";
    if (phase == "running") chunk.resize(utf8_complete(chunk));
    json state = {{"phase", phase}, {"restarts", st.restarts}};
    if (int p = chosen_port(id)) state["port"] = p;
    if (phase == "exited") state["exit_code"] = exit_code;
    if (auto hs = health.state(id); hs && hs->checked) {
      state["health"] = {{"healthy", hs->healthy}, {"consecutive_failures", hs->consecutive_failures},
                         {"message", hs->message}};
    }
    if (reported[id] == state && chunk.empty()) return;
    json body = state;
    if (!chunk.empty()) {
      body["log"] = chunk;  // dump_json replaces invalid UTF-8
      body["log_total"] = start + int64_t(chunk.size());
    }
    auto r = client.request("POST", "/agent/v1/assignments/" + id + "/status", dump_json(body), auth);
    if (r.status == 200) {
      reported[id] = state;
      if (!chunk.empty()) log_sent[id] = start + int64_t(chunk.size());
      if (phase == "exited") spdlog::info("{} exited with {}", id, exit_code);
    } else {
      spdlog::warn("report {}: {}", id, error_message(r));
    }
  }

  // Execs: commands run inside a running instance, in its sandbox context (its user, env with
  // its GPUs, its work dir, its cgroup), each in a process group of its own, killed at timeout.
  void sync_execs(const json& list, const std::map<std::string, json>& assignments) {
    std::set<std::string> wanted;
    for (const auto& e : list) {
      std::string id = e.value("id", "");
      if (id.empty()) continue;
      wanted.insert(id);
      if (!exec_sent.count(id)) exec_sent[id] = e.value("output_total", int64_t(0));
      std::string asg = e.value("assignment_id", "");
      auto a = assignments.find(asg);
      bool instance_running = a != assignments.end() && a->second.value("desired", "run") == "run" &&
                              executor.state(asg).phase == ProcessState::kRunning;
      ProcessState st = execs.state(id);
      if (st.phase == ProcessState::kUnknown) {
        if (e.value("status", "pending") != "pending") {
          exec_failed(id, "the agent has no record of this command (its work dir was lost)");
          continue;
        }
        if (!instance_running) {
          exec_failed(id, "the instance is not running on this node");
          continue;
        }
        const json& as = a->second;
        SandboxSpec spec;
        spec.id = id;
        spec.argv = e["command"].get<std::vector<std::string>>();
        spec.env = as["env"].get<std::map<std::string, std::string>>();
        spec.gpus = as["gpus"].get<std::vector<int>>();
        spec.memory_bytes = as.value("memory_bytes", int64_t(0));
        spec.run_as = run_as;
        spec.nice = nice;
        spec.cwd = executor.dir(asg) + "/work";
        spec.cgroup = asg;
        spec.timeout_ms = e.value("timeout_seconds", int64_t(60)) * 1000;
        spec.log_cap_bytes = 1 << 20;
        std::string err;
        if (!execs.start(spec, &err)) {
          exec_failed(id, "cannot start: " + err);
          continue;
        }
        spdlog::info("exec {} in {}", id, asg);
        quick_until_ms = now_ms() + 2000;
        st = execs.state(id);
      }
      if (st.phase == ProcessState::kRunning && !instance_running) execs.stop(id, 2000);
      report_exec(id, st);
    }
    for (const auto& id : execs.known()) {
      if (wanted.count(id)) continue;
      if (execs.state(id).phase == ProcessState::kRunning) {
        execs.stop(id, 2000);
      } else {
        execs.forget(id);
        exec_reported.erase(id);
        exec_sent.erase(id);
      }
    }
  }

  void exec_failed(const std::string& id, const std::string& why) {
    auto r = client.request("POST", "/agent/v1/execs/" + id + "/status",
                            dump_json({{"status", "exited"}, {"error", why}}), auth);
    if (r.status != 200) spdlog::warn("report exec {}: {}", id, error_message(r));
  }

  void report_exec(const std::string& id, const ProcessState& st) {
    int64_t total = 0, start = 0;
    std::string chunk = execs.read_log(id, exec_sent[id], kChunk, &total, &start);
    bool last = start + int64_t(chunk.size()) >= total;
    std::string status = st.phase == ProcessState::kExited && last ? "exited" : "running";
    if (status == "running") chunk.resize(utf8_complete(chunk));
    if (exec_reported[id] == status && chunk.empty()) return;
    json body = {{"status", status}};
    if (status == "exited") {
      body["exit_code"] = st.exit_code;
      body["timed_out"] = st.timed_out;
    }
    if (!chunk.empty()) {
      body["output"] = chunk;
      body["output_total"] = start + int64_t(chunk.size());
    }
    auto r = client.request("POST", "/agent/v1/execs/" + id + "/status", dump_json(body), auth);
    if (r.status == 200) {
      exec_reported[id] = status;
      if (!chunk.empty()) exec_sent[id] = start + int64_t(chunk.size());
    } else {
      spdlog::warn("report exec {}: {}", id, error_message(r));
    }
  }
};

// This node's assignments, kept current by a long-poll on a thread and connection of its own:
//   GET /agent/v1/assignments?wait=25&after=VERSION
// The server holds the request until something this agent acts on changes (a new assignment or
// exec, a stop, a preemption), or for the wait, then answers with the whole list and its VERSION
// to send next. Level-triggered: every answer is the full list, so a lost wake-up costs latency,
// never correctness. An older server that ignores `wait` is polled every kSyncMs. The poller
// thread owns its state and is never joined: a stopping agent does not wait for a held request.
class AssignmentFeed {
 public:
  AssignmentFeed(const std::string& server, std::vector<std::pair<std::string, std::string>> auth)
      : s_(std::make_shared<Shared>()) {
    std::thread([s = s_, server, auth = std::move(auth)] {
      try {
        poll(*s, server, auth);
      } catch (const std::exception& e) {  // not expected: the main loop's client has the same URL
        std::lock_guard lk(s->mu);
        s->error = std::string("assignments: ") + e.what();
      }
    }).detach();
  }

  // Waits up to ms (or until the agent stops) for an answer newer than the one numbered `seen`;
  // true with it in body (and seen moved on).
  bool wait_newer(uint64_t& seen, json& body, int64_t ms) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    std::unique_lock lk(s_->mu);
    while (s_->n == seen && !g_stop) {
      // In slices: SIGTERM sets g_stop from a signal handler, which cannot notify.
      auto slice = std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(50));
      s_->cv.wait_until(lk, slice);
      if (std::chrono::steady_clock::now() >= until) break;
    }
    if (s_->n == seen) return false;
    seen = s_->n;
    body = s_->body;
    return true;
  }
  // What went wrong with the last poll ("" if it went well): the main thread logs it (the
  // poller does not, as it may outlive the logger).
  std::string error() {
    std::lock_guard lk(s_->mu);
    return s_->error;
  }

 private:
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    json body;
    uint64_t n = 0;  // answers so far
    std::string error;
  };

  static void poll(Shared& s, const std::string& server, const std::vector<std::pair<std::string, std::string>>& auth) {
    // The read may last the whole wait: a timeout well beyond it.
    http::Client client(server, std::chrono::seconds(kWaitSeconds + 30));
    std::mt19937 rng(std::random_device{}());
    std::string version;
    int64_t backoff = 250;
    auto set_error = [&s](std::string e) {
      std::lock_guard lk(s.mu);
      s.error = std::move(e);
    };
    while (!g_stop) {
      std::string target = "/agent/v1/assignments";
      if (!version.empty()) target += "?wait=" + std::to_string(kWaitSeconds) + "&after=" + version;
      int64_t t0 = now_ms();
      try {
        auto r = client.request("GET", target, "", auth);
        if (r.status == 200) {
          json body = json::parse(r.body);
          std::string next = body.value("version", "");
          {
            std::lock_guard lk(s.mu);
            s.body = std::move(body);
            ++s.n;
            s.error.clear();
          }
          s.cv.notify_all();
          // Answered at once with nothing new: the server did not hold it (an older server, or
          // too many held): ask again after a pause rather than at once.
          bool held = !next.empty() && (next != version || now_ms() - t0 >= kWaitSeconds * 1000 / 2);
          version = next;
          backoff = 250;
          if (!held) sleep_interruptible(kSyncMs);
          continue;
        }
        // 409: a newer request of this node superseded it; 503: the server is stopping; 401: the
        // main loop's heartbeat tells the operator.
        set_error("assignments: " + error_message(r));
      } catch (const http::ConnectionError& e) {
        set_error("");  // the main loop reports the server unreachable
      } catch (const std::exception& e) {
        set_error(std::string("assignments: ") + e.what());
      }
      sleep_interruptible(backoff + int64_t(rng() % uint64_t(backoff / 4 + 1)));
      backoff = std::min<int64_t>(backoff * 2, 2000);
    }
  }

  std::shared_ptr<Shared> s_;
};

}  // namespace

int agent_command(int argc, char** argv) {
  CLI::App cli{"Run the node agent: join the cloud and keep this node's lease", "aicloud agent"};
  std::string server, join_token, work_dir, name, region, zone, gpus_spec, domain, log_level = "info";
  std::vector<std::string> labels;
  std::string run_as = geteuid() == 0 ? "nobody" : "";
  std::string address;
  cli.add_option("--server", server, "the server's URL, e.g. http://10.0.0.1:8080")->required();
  cli.add_option("--join-token", join_token, "a join token from the operator (needed only to join)");
  cli.add_option("--work-dir", work_dir, "where the agent keeps its credential and workloads")->required();
  cli.add_option("--name", name, "the node's name (default: the host name)");
  cli.add_option("--region", region, "region, when the join token does not fix it");
  cli.add_option("--zone", zone, "zone (data centre) in the region");
  cli.add_option("--gpus", gpus_spec, "declare GPUs, e.g. 8xH100-80GB, when NVML is absent or for tests");
  cli.add_option("--nvlink-domain", domain, "the NVLink domain (e.g. the NVL72 rack) this node is in");
  cli.add_option("--label", labels, "a label key=value (repeatable)");
  cli.add_option("--address", address, "the address other nodes reach this one at (default: the node name)");
  cli.add_option("--run-as", run_as, "run workloads as this user (default when root: nobody; \"\" = the agent's user)")
      ->capture_default_str();
  int workload_nice = 10;
  cli.add_option("--workload-nice", workload_nice,
                 "run workloads this many nice levels below the agent (0-19; 0 = the same CPU priority), so that "
                 "the agent, and a server on the same machine, are not kept waiting by them for the CPU")
      ->check(CLI::Range(0, 19))
      ->capture_default_str();
  std::string engine_dir_flag;
  cli.add_option("--engine-dir", engine_dir_flag, "the llama.cpp engine build to run model replicas with (default: make engine's)");
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  init_logging(log_level);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);

  try {
    fs::create_directories(work_dir);
    // Traversable but not listable: workloads run as another user and must reach their own dirs.
    ::chmod(work_dir.c_str(), 0711);
    fs::path cred_file = fs::path(work_dir) / "node.json";
    http::Client client(server, std::chrono::seconds(10));

    auto cred = load_credential(cred_file);
    if (!cred) {
      if (join_token.empty()) {
        std::cerr << "error: this node has not joined yet: pass --join-token (ask the operator: "
                     "aicloud join-tokens create)\n";
        return 2;
      }
      if (name.empty()) {
        char host[256] = {};
        gethostname(host, sizeof host - 1);
        name = host;
        for (auto& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
      }
      std::vector<GpuInfo> gpus;
      std::string why;
      if (!gpus_spec.empty()) {
        gpus = parse_gpu_spec(gpus_spec, name);
      } else if (auto real = probe_nvml(&why)) {
        gpus = *real;
      } else {
        spdlog::info("no GPUs reported: {}", why);
      }
      json body = {{"join_token", join_token}, {"name", name}, {"cpu_cores", int64_t(std::thread::hardware_concurrency())},
                   {"memory_bytes", memory_bytes()}, {"agent_version", "0.1.0"}};
      if (!region.empty()) body["region"] = region;
      body["address"] = address.empty() ? name : address;
      if (!zone.empty()) body["zone"] = zone;
      if (!domain.empty()) body["nvlink_domain"] = domain;
      json gj = json::array();
      for (const auto& g : gpus) gj.push_back({{"index", g.index}, {"model", g.model}, {"memory_mb", g.memory_mb}, {"uuid", g.uuid}});
      body["gpus"] = gj;
      json lj = json::object();
      for (const auto& l : labels) {
        auto eq = l.find('=');
        if (eq == std::string::npos || eq == 0) {
          std::cerr << "error: --label must be key=value, got '" << l << "'\n";
          return 2;
        }
        lj[l.substr(0, eq)] = l.substr(eq + 1);
      }
      body["labels"] = lj;
      // Joining is retried while the server is unreachable; a refusal is final.
      for (int64_t backoff = 500;; backoff = std::min<int64_t>(backoff * 2, 30'000)) {
        try {
          auto r = client.request("POST", "/agent/v1/join", body.dump(), {{"content-type", "application/json"}});
          if (r.status != 201) {
            std::cerr << "error: the server refused to let this node join: " << error_message(r) << "\n";
            return 1;
          }
          json j = json::parse(r.body);
          cred = Credential{j["node"]["id"], j["node_key"], server};
          save_credential(cred_file, *cred);
          std::cout << "joined as " << cred->node_id << " (" << name << ", " << gpus.size() << " GPUs)\n" << std::flush;
          break;
        } catch (const http::ConnectionError& e) {
          spdlog::warn("join: {}; retrying in {} ms", e.what(), backoff);
          sleep_interruptible(backoff);
          if (g_stop) return 0;
        }
      }
    } else {
      spdlog::info("using the node credential in {} (node {})", cred_file.string(), cred->node_id);
    }

    std::vector<std::pair<std::string, std::string>> auth = {{"authorization", "Bearer " + cred->node_key},
                                                             {"content-type", "application/json"}};
    int64_t interval = 5000, backoff = 250;
    int64_t next_beat = 0;
    std::string last_state;
    Executor executor((fs::path(work_dir) / "workloads").string(), self_exe());
    Executor execs((fs::path(work_dir) / "execs").string(), self_exe());
    HealthMonitor health;
    NodeFiles files{server, cred->node_key, work_dir, engine_dir_flag};
    WorkloadSync sync{client, auth, executor, execs, health, run_as, workload_nice, files, {}, {}, {}, {}, {}, 0, {}, {}};
    std::mt19937 rng(std::random_device{}());
    // Any way out of here stops the poller (it then neither publishes nor retries).
    struct StopPoller {
      ~StopPoller() { g_stop = true; }
    } stop_poller;
    AssignmentFeed feed(server, auth);
    uint64_t seen = 0;  // the feed's answers applied so far
    json assignments;   // the latest of them
    std::string feed_error;
    while (!g_stop) {
      try {
        if (now_ms() >= next_beat) {
          auto r = client.request("POST", "/agent/v1/heartbeat", "{}", auth);
          if (r.status == 401 || r.status == 404) {
            std::cerr << "error: the server no longer accepts this node's credential (" << error_message(r)
                      << "); remove " << cred_file.string() << " and join again\n";
            return 1;
          }
          if (r.status != 200) {
            spdlog::warn("heartbeat: {}", error_message(r));
          } else {
            json j = json::parse(r.body);
            interval = std::clamp<int64_t>(j.value("heartbeat_interval_ms", int64_t(5000)), 100, 60'000);
            std::string state = j.value("state", "");
            if (state != last_state) spdlog::info("node {} is {}", cred->node_id, state);
            last_state = state;
          }
          next_beat = now_ms() + interval;
        }
        if (seen > 0) {
          sync.once(assignments);
        } else {  // no list yet: start nothing, stop nothing (re-adopted workloads keep running)
          executor.tick();
          execs.tick();
        }
        if (std::string e = feed.error(); e != feed_error) {
          if (!e.empty()) spdlog::warn("{}", e);
          feed_error = e;
        }
        backoff = 250;
        // Until the next local pass or heartbeat, or at once when the assignments change.
        feed.wait_newer(seen, assignments, std::min<int64_t>(interval, sync.hurry() ? kQuickMs : kSyncMs));
      } catch (const http::ConnectionError& e) {
        // Backoff with jitter, but at least one try per heartbeat interval: a restarted server
        // gives each node one lease term (3 intervals) to check in before it counts it lost.
        int64_t wait = backoff + int64_t(rng() % uint64_t(backoff / 4 + 1));
        spdlog::warn("server unreachable: {}; retrying in {} ms (workloads keep running)", e.what(), wait);
        sleep_interruptible(wait);
        backoff = std::min<int64_t>(backoff * 2, std::clamp<int64_t>(interval, 250, 30'000));
      }
    }
    spdlog::info("agent stopping");
    spdlog::shutdown();
    return 0;
  } catch (const std::exception& e) {
    spdlog::shutdown();
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace aicloud
