#include "capacity/leases.h"

namespace aicloud {

void NodeLeases::renew(const std::string& node_id, int64_t now_ms) {
  std::lock_guard lk(mu_);
  last_[node_id] = now_ms;
}

void NodeLeases::forget(const std::string& node_id) {
  std::lock_guard lk(mu_);
  last_.erase(node_id);
}

bool NodeLeases::alive(const std::string& node_id, int64_t now_ms) const {
  int64_t t = last_seen_ms(node_id);
  return t > 0 && now_ms - t <= ttl_ms_;
}

int64_t NodeLeases::last_seen_ms(const std::string& node_id) const {
  std::lock_guard lk(mu_);
  auto it = last_.find(node_id);
  return it == last_.end() ? 0 : it->second;
}

}  // namespace aicloud
