#include "server/server_main.h"
#include "server/up.h"

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <sys/stat.h>

#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <iostream>

#include "api/app.h"
#include "capacity/leases.h"
#include "gateway/endpoints.h"
#include "gateway/gateway.h"
#include "metering/meter.h"
#include "models/deployments.h"
#include "workloads/controller.h"
#include "identity/crypto.h"
#include "util/log.h"
#include "util/thread_name.h"

namespace aicloud {
namespace fs = std::filesystem;

// The operator's root key: preset by AICLOUD_ADMIN_KEY, else made on first start. Either way
// it is written to DIR/admin.key (0600) and only its hash is kept in the store.
static void ensure_operator_key(Store& store, const fs::path& data_dir, bool print) {
  const char* preset = std::getenv("AICLOUD_ADMIN_KEY");
  std::string key;
  if (preset && *preset) {
    key = preset;
    if (!key.starts_with(kOperatorToken.prefix) || key.size() < kOperatorToken.prefix.size() + 24 ||
        key.size() > kOperatorToken.prefix.size() + 128) {
      throw std::runtime_error("AICLOUD_ADMIN_KEY must start with 'sk-root-' followed by 24 to 128 characters");
    }
  }
  bool created = store.write([&](Tx& tx) {
    auto existing = tx.get("operator_key", "operator");
    if (existing && key.empty()) return false;
    if (key.empty()) key = make_secret(kOperatorToken);
    Object o;
    o.kind = "operator_key";
    o.id = "operator";
    o.lookup = sha256_hex(key);
    o.data = {{"redacted_value", redact_secret(key)}};
    if (existing) {
      if (existing->lookup == o.lookup) return false;
      o.version = existing->version;
      o.seq = existing->seq;
      tx.update(o);
    } else {
      tx.insert(o);
    }
    return true;
  });
  if (!created) return;
  fs::path file = data_dir / "admin.key";
  {
    std::ofstream f(file, std::ios::trunc);
    f << key << "\n";
  }
  ::chmod(file.c_str(), 0600);
  if (print && !preset) {
    std::cout << "Operator key (shown once; also saved to " << file.string() << ", mode 0600):\n  " << key << "\n"
              << std::flush;
  }
}

// Writes API keys' last_used_at every 2 s on a thread of its own: the write waits for the store's
// writer lock (and an fsync), which on an io thread would stall every connection it serves.
class LastUsedFlusher {
 public:
  explicit LastUsedFlusher(AuthService& auth) : auth_(auth), thread_([this] {
        name_this_thread("key-last-used");
        run();
      }) {}
  ~LastUsedFlusher() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void run() {
    std::unique_lock lk(mu_);
    while (!cv_.wait_for(lk, std::chrono::seconds(2), [this] { return stop_; })) {
      lk.unlock();
      try {
        auth_.flush_last_used();
      } catch (const std::exception& e) {
        spdlog::warn("could not record API key last_used_at: {}", e.what());
      }
      lk.lock();
    }
  }
  AuthService& auth_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

int server_command(int argc, char** argv) {
  if (std::string(argv[0]) == "up") return up_command(argc, argv);  // server + agent + model (up.h)
  bool up = std::string(argv[0]) == "up";
  CLI::App cli{up ? "Start the single-machine cloud (server on this machine)" : "Run the aicloud control-plane server",
               up ? "aicloud up" : "aicloud server"};
  std::string listen = "127.0.0.1:8080";
  std::string data_dir = up ? ".aicloud" : "";
  std::string log_level = "info";
  std::string sync = "full";
  int threads = 0;
  size_t body_limit = 16 * 1024 * 1024;
  int64_t heartbeat_ms = 5000;
  int64_t preemption_notice_ms = 30000;
  int64_t header_timeout_ms = 10'000, idle_timeout_ms = 60'000;
  int64_t wake_timeout_ms = 60'000;
  cli.add_option("--listen", listen, "address:port to serve on (port 0 picks a free one)")->capture_default_str();
  auto* dd = cli.add_option("--data-dir", data_dir, "where the database and the operator key live");
  if (up) dd->capture_default_str(); else dd->required();
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
  cli.add_option("--sync", sync, "full: fsync each commit and each group of usage records (survives power loss); normal: survives process crashes")
      ->check(CLI::IsMember({"full", "normal"}))
      ->capture_default_str();
  cli.add_option("--threads", threads, "HTTP worker threads (0 = one per core)")->check(CLI::Range(0, 256));
  cli.add_option("--heartbeat-interval-ms", heartbeat_ms, "how often agents beat; 3 missed beats = not-ready")
      ->check(CLI::Range(int64_t(100), int64_t(600'000)))
      ->capture_default_str();
  cli.add_option("--preemption-notice-ms", preemption_notice_ms, "how long preempted spot work has after SIGTERM")
      ->check(CLI::Range(int64_t(0), int64_t(3'600'000)))
      ->capture_default_str();
  cli.add_option("--max-body-bytes", body_limit, "request body limit; larger bodies get 413")->capture_default_str();
  cli.add_option("--header-timeout-ms", header_timeout_ms,
                 "a request's headers must arrive within this long of its first byte (slow clients are cut off)")
      ->check(CLI::Range(int64_t(10), int64_t(3'600'000)))
      ->capture_default_str();
  cli.add_option("--idle-timeout-ms", idle_timeout_ms, "a keep-alive connection with no request is closed after this long")
      ->check(CLI::Range(int64_t(10), int64_t(3'600'000)))
      ->capture_default_str();
  cli.add_option("--wake-timeout-ms", wake_timeout_ms,
                 "how long a request for a model scaled to zero waits for a replica (then 503 with retry-after)")
      ->check(CLI::Range(int64_t(100), int64_t(3'600'000)))
      ->capture_default_str();
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  // A file-size limit (ulimit -f) reached by the usage journal or the database is an error that
  // the write reports (EFBIG: the request is refused, 503 metering_unavailable), not a signal
  // that kills the server with every request in flight.
  ::signal(SIGXFSZ, SIG_IGN);

  auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    std::cerr << "error: --listen must be HOST:PORT, e.g. 127.0.0.1:8080 (got '" << listen << "')\n";
    return 2;
  }
  http::ServerOptions so;
  so.host = listen.substr(0, colon);
  if (so.host.size() > 2 && so.host.front() == '[') so.host = so.host.substr(1, so.host.size() - 2);
  try {
    int port = std::stoi(listen.substr(colon + 1));
    if (port < 0 || port > 65535) throw std::out_of_range("port");
    so.port = uint16_t(port);
  } catch (const std::exception&) {
    std::cerr << "error: --listen port must be a number from 0 to 65535 (got '" << listen << "')\n";
    return 2;
  }
  so.threads = threads;
  so.body_limit = body_limit;
  so.header_timeout = std::chrono::milliseconds(header_timeout_ms);
  so.idle_timeout = std::chrono::milliseconds(idle_timeout_ms);

  init_logging(log_level);
  try {
    fs::create_directories(data_dir);
    ::chmod(data_dir.c_str(), 0700);
    auto store = open_sqlite_store({(fs::path(data_dir) / "aicloud.db").string(), sync == "full"});
    ensure_operator_key(*store, data_dir, true);

    App app(*store);
    add_system_routes(app);
    add_auth_routes(app);
    add_admin_routes(app);
    add_org_routes(app);
    NodeLeases leases(heartbeat_ms);
    add_capacity_routes(app, leases);
    add_compute_routes(app, leases);
    add_reservation_routes(app);
    add_model_routes(app, data_dir);

    // The gateway proxies on the server's own io threads; usage records go through the journal
    // in DATA_DIR/usage-journal (metering/meter.h), fdatasynced in groups under --sync full.
    Meter meter(*store, {(fs::path(data_dir) / "usage-journal").string(), sync == "full"});
    gateway::ReplicaDirectory replicas;
    http::Server server(so, app);
    gateway::GatewayOptions go;
    go.wake_timeout = std::chrono::milliseconds(wake_timeout_ms);
    gateway::Gateway gw(server.io_contexts(), meter, replicas, go);
    gw.add_routes(app);
    add_deployment_routes(app);
    gateway::add_endpoint_routes(app);
    add_usage_routes(app, meter);
    add_rate_limit_routes(app);
    app.finalize();

    app.set_connection_gauge([&server] { return server.open_connections(); });
    app.add_metrics_text([&meter] { return meter.prometheus(); });
    std::string url = "http://" + (so.host.find(':') != std::string::npos ? "[" + so.host + "]" : so.host) + ":" +
                      std::to_string(server.port());
    {
      std::ofstream f(fs::path(data_dir) / "server.url", std::ios::trunc);
      f << url << "\n";
    }
    ControllerOptions co;
    co.preemption_notice_ms = preemption_notice_ms;
    SchedulerController controller(*store, leases, co);
    controller.start();
    DeploymentController deployments(*store, replicas);
    deployments.start();
    std::optional<LastUsedFlusher> last_used(std::in_place, app.auth());

    std::cout << "aicloud server listening on " << url << " (data dir " << data_dir << ")\n";
    if (up) {
      std::string key_file = (fs::path(data_dir) / "admin.key").string();
      std::cout << "\nThe cloud is up. Try:\n"
                << "  export AICLOUD_URL=" << url << "\n"
                << "  export AICLOUD_API_KEY=$(cat " << key_file << ")\n"
                << "  curl -s $AICLOUD_URL/healthz\n"
                << "  build/aicloud orgs create --name acme --owner-email you@example.com --owner-password 'choose-a-password'\n"
                << "  build/aicloud orgs list\n"
                << "Stop it with Ctrl-C.\n";
    }
    std::cout << std::flush;
    spdlog::info("listening on {}", url);
    server.run();
    deployments.stop();
    controller.stop();
    last_used.reset();
    app.auth().flush_last_used();
    spdlog::info("stopped");
    spdlog::shutdown();
    return 0;
  } catch (const std::exception& e) {
    spdlog::shutdown();
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace aicloud
