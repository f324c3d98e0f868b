#include "agent/agent.h"

#include <CLI/CLI.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <map>
#include <set>
#include <thread>

#include "agent/executor.h"
#include "agent/gpu_probe.h"
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

constexpr int64_t kSyncMs = 500;  // how often the agent asks for its assignments

// Reconciles this node's workloads with the server's assignments: starts what should run,
// stops what should not, and reports phases, exit codes and new log output.
struct WorkloadSync {
  http::Client& client;
  const std::vector<std::pair<std::string, std::string>>& auth;
  Executor& executor;
  std::string run_as;
  std::map<std::string, std::string> reported;  // assignment id -> phase reported
  std::map<std::string, int64_t> log_sent;      // assignment id -> log bytes shipped

  void once() {
    executor.tick();
    auto r = client.request("GET", "/agent/v1/assignments", "", auth);
    if (r.status != 200) {
      spdlog::warn("assignments: {}", error_message(r));
      return;
    }
    json list = json::parse(r.body)["data"];
    std::set<std::string> wanted;
    for (const auto& a : list) {
      std::string id = a["id"];
      wanted.insert(id);
      ProcessState st = executor.state(id);
      if (a.value("desired", "run") == "hold") continue;  // placed, waiting for preempted work to leave
      if (a.value("desired", "run") == "stop") {
        if (st.phase == ProcessState::kRunning) executor.stop(id, a.value("grace_ms", int64_t(30000)));
        if (st.phase == ProcessState::kUnknown) report(id, "exited", 128 + SIGTERM);  // stopped before it started
        continue;
      }
      if (st.phase == ProcessState::kUnknown) {
        SandboxSpec spec;
        spec.id = id;
        spec.argv = a["command"].get<std::vector<std::string>>();
        spec.env = a["env"].get<std::map<std::string, std::string>>();
        spec.gpus = a["gpus"].get<std::vector<int>>();
        spec.memory_bytes = a.value("memory_bytes", int64_t(0));
        spec.run_as = run_as;
        std::string err;
        if (!executor.start(spec, &err)) {
          spdlog::error("cannot start {}: {}", id, err);
          report(id, "exited", 126);
          continue;
        }
        spdlog::info("started {} (rank {} of {})", id, a.value("rank", 0), a.value("world_size", 1));
      }
    }
    // Report what runs and what ended; stop what the server no longer wants (no orphans).
    for (const auto& id : executor.known()) {
      ProcessState st = executor.state(id);
      if (!wanted.count(id)) {
        if (st.phase == ProcessState::kRunning) {
          executor.stop(id, 10000);
        } else {
          executor.forget(id);
          reported.erase(id);
          log_sent.erase(id);
        }
        continue;
      }
      if (st.phase == ProcessState::kRunning) report(id, "running", -1);
      if (st.phase == ProcessState::kExited) report(id, "exited", st.exit_code);
    }
  }

  void report(const std::string& id, const std::string& phase, int exit_code) {
    int64_t total = 0;
    std::string chunk = executor.read_log(id, log_sent[id], 256 * 1024, &total);
    if (reported[id] == phase && chunk.empty()) return;
    json body = {{"phase", phase}};
    if (phase == "exited") body["exit_code"] = exit_code;
    if (!chunk.empty()) {
      body["log"] = chunk;  // dump_json replaces invalid UTF-8
      body["log_total"] = log_sent[id] + int64_t(chunk.size());
    }
    auto r = client.request("POST", "/agent/v1/assignments/" + id + "/status", dump_json(body), auth);
    if (r.status == 200) {
      reported[id] = phase;
      log_sent[id] += int64_t(chunk.size());
      if (phase == "exited") spdlog::info("{} exited with {}", id, exit_code);
    } else {
      spdlog::warn("report {}: {}", id, error_message(r));
    }
  }
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
    int64_t interval = 5000, backoff = 500;
    int64_t next_beat = 0;
    std::string last_state;
    Executor executor((fs::path(work_dir) / "workloads").string(), self_exe());
    WorkloadSync sync{client, auth, executor, run_as, {}, {}};
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
        sync.once();
        backoff = 500;
        sleep_interruptible(std::min<int64_t>(interval, kSyncMs));
      } catch (const http::ConnectionError& e) {
        spdlog::warn("server unreachable: {}; retrying in {} ms (workloads keep running)", e.what(), backoff);
        sleep_interruptible(backoff);
        backoff = std::min<int64_t>(backoff * 2, 30'000);
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
