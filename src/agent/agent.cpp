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
#include <thread>

#include "agent/gpu_probe.h"
#include "http/client.h"
#include "util/json_util.h"
#include "util/log.h"

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

}  // namespace

int agent_command(int argc, char** argv) {
  CLI::App cli{"Run the node agent: join the cloud and keep this node's lease", "aicloud agent"};
  std::string server, join_token, work_dir, name, region, zone, gpus_spec, domain, log_level = "info";
  std::vector<std::string> labels;
  cli.add_option("--server", server, "the server's URL, e.g. http://10.0.0.1:8080")->required();
  cli.add_option("--join-token", join_token, "a join token from the operator (needed only to join)");
  cli.add_option("--work-dir", work_dir, "where the agent keeps its credential and workloads")->required();
  cli.add_option("--name", name, "the node's name (default: the host name)");
  cli.add_option("--region", region, "region, when the join token does not fix it");
  cli.add_option("--zone", zone, "zone (data centre) in the region");
  cli.add_option("--gpus", gpus_spec, "declare GPUs, e.g. 8xH100-80GB, when NVML is absent or for tests");
  cli.add_option("--nvlink-domain", domain, "the NVLink domain (e.g. the NVL72 rack) this node is in");
  cli.add_option("--label", labels, "a label key=value (repeatable)");
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
    ::chmod(work_dir.c_str(), 0700);
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
    std::string last_state;
    while (!g_stop) {
      try {
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
          interval = std::clamp<int64_t>(j.value("heartbeat_interval_ms", int64_t(5000)), 200, 60'000);
          std::string state = j.value("state", "");
          if (state != last_state) spdlog::info("node {} is {}", cred->node_id, state);
          last_state = state;
        }
        backoff = 500;
        sleep_interruptible(interval);
      } catch (const http::ConnectionError& e) {
        spdlog::warn("heartbeat: {}; retrying in {} ms", e.what(), backoff);
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
