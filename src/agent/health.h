// HTTP health checks of the services an agent runs: GET http://127.0.0.1:PORT/PATH every
// interval, healthy when it answers 2xx or 3xx within the timeout. Each watched service has a
// prober thread of its own, so a slow service never delays another's checks or the agent's loop.
//
// The monitor only observes; the agent decides. A service is `failing` (the agent restarts it)
// when, after it was healthy once, failure_threshold checks in a row failed, or when it was never
// healthy within startup_timeout (so a model server may take minutes to load its weights).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace aicloud {

struct HealthCheck {
  int port = 0;
  std::string path = "/health";
  int64_t interval_ms = 2000;
  int64_t timeout_ms = 1000;
  int failure_threshold = 3;
  int64_t startup_timeout_ms = 600'000;
  bool operator==(const HealthCheck&) const = default;
};

struct HealthState {
  bool checked = false;        // there is an outcome to report (a probe ran, or a restart reset it)
  bool healthy = false;        // the last probe succeeded
  bool ever_healthy = false;   // a probe succeeded since watching (re)started
  int consecutive_failures = 0;
  std::string message;         // the last outcome: "HTTP 200", "no answer on 127.0.0.1:8000", ...
  int64_t since_ms = 0;        // when watching (re)started
  bool failing = false;        // the agent should restart the process
};

class HealthMonitor {
 public:
  HealthMonitor() = default;
  ~HealthMonitor();
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // Starts probing id (a no-op when it is already watched with the same check).
  void watch(const std::string& id, const HealthCheck& check);
  void unwatch(const std::string& id);
  // The process behind id was restarted: not healthy until a probe of the new one succeeds.
  void reset(const std::string& id, const std::string& why);
  std::optional<HealthState> state(const std::string& id) const;
  std::vector<std::string> watched() const;

 private:
  struct Target;
  void run(std::shared_ptr<Target> t);
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Target>> targets_;
};

// One probe. Returns whether it was healthy; *message says what happened.
bool probe_http(int port, const std::string& path, int64_t timeout_ms, std::string* message);

}  // namespace aicloud
