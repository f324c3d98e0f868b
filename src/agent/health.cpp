#include "agent/health.h"

#include <condition_variable>
#include <thread>

#include "http/client.h"
#include "util/time.h"

namespace aicloud {

struct HealthMonitor::Target {
  HealthCheck check;
  HealthState state;
  uint64_t generation = 0;  // bumped by reset(): a probe that began before it does not count
  bool stop = false;
  std::condition_variable cv;
  std::thread thread;
};

bool probe_http(int port, const std::string& path, int64_t timeout_ms, std::string* message) {
  std::string where = "127.0.0.1:" + std::to_string(port);
  try {
    http::Client c("http://" + where, std::chrono::milliseconds(timeout_ms));
    auto r = c.request("GET", path, "", {{"user-agent", "aicloud-health-check"}});
    *message = "HTTP " + std::to_string(r.status) + " from " + where + path;
    return r.status >= 200 && r.status < 400;
  } catch (const std::exception&) {
    *message = "no HTTP answer on " + where + path + " within " + std::to_string(timeout_ms) + " ms";
    return false;
  }
}

HealthMonitor::~HealthMonitor() {
  for (const auto& id : watched()) unwatch(id);
}

void HealthMonitor::watch(const std::string& id, const HealthCheck& check) {
  std::lock_guard lk(mu_);
  auto it = targets_.find(id);
  if (it != targets_.end()) {
    if (it->second->check == check) return;
    it->second->check = check;  // the prober reads it under the lock each round
    return;
  }
  auto t = std::make_shared<Target>();
  t->check = check;
  t->state.since_ms = now_ms();
  targets_[id] = t;
  t->thread = std::thread([this, t] { run(t); });
}

void HealthMonitor::unwatch(const std::string& id) {
  std::shared_ptr<Target> t;
  {
    std::lock_guard lk(mu_);
    auto it = targets_.find(id);
    if (it == targets_.end()) return;
    t = it->second;
    t->stop = true;
    targets_.erase(it);
  }
  t->cv.notify_all();
  if (t->thread.joinable()) t->thread.join();  // at most one probe's timeout
}

void HealthMonitor::reset(const std::string& id, const std::string& why) {
  std::lock_guard lk(mu_);
  auto it = targets_.find(id);
  if (it == targets_.end()) return;
  HealthState& s = it->second->state;
  s = HealthState{};
  s.checked = true;
  s.message = why;
  s.since_ms = now_ms();
  ++it->second->generation;
}

std::optional<HealthState> HealthMonitor::state(const std::string& id) const {
  std::lock_guard lk(mu_);
  auto it = targets_.find(id);
  if (it == targets_.end()) return std::nullopt;
  return it->second->state;
}

std::vector<std::string> HealthMonitor::watched() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (const auto& [id, t] : targets_) out.push_back(id);
  return out;
}

void HealthMonitor::run(std::shared_ptr<Target> t) {
  // The first probe comes soon (a re-adopted service is reported healthy again quickly), then
  // one per interval.
  int64_t wait_ms = 200;
  std::unique_lock lk(mu_);
  while (true) {
    t->cv.wait_for(lk, std::chrono::milliseconds(wait_ms), [&] { return t->stop; });
    if (t->stop) return;
    HealthCheck check = t->check;
    uint64_t generation = t->generation;
    lk.unlock();
    std::string message;
    bool ok = probe_http(check.port, check.path, check.timeout_ms, &message);
    lk.lock();
    if (t->stop) return;
    wait_ms = check.interval_ms;
    if (generation != t->generation) continue;  // reset while probing: that probe saw the old process
    HealthState& s = t->state;
    s.checked = true;
    s.healthy = ok;
    s.message = message;
    if (ok) {
      s.ever_healthy = true;
      s.consecutive_failures = 0;
    } else {
      ++s.consecutive_failures;
    }
    s.failing = s.ever_healthy ? s.consecutive_failures >= check.failure_threshold
                               : now_ms() - s.since_ms >= check.startup_timeout_ms;
  }
}

}  // namespace aicloud
