// Node heartbeats as leases, held in memory: a heartbeat renews a node's lease without touching
// the database (10,000 agents at one beat per 5 s would otherwise be 2,000 writes a second).
// A node whose lease has expired (3 missed beats) is not-ready. After a server restart every node
// is not-ready until its next beat, which is at most one interval away.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace aicloud {

class NodeLeases {
 public:
  explicit NodeLeases(int64_t interval_ms = 5000, int missed_beats = 3)
      : interval_ms_(interval_ms), ttl_ms_(interval_ms * missed_beats) {}

  void renew(const std::string& node_id, int64_t now_ms);
  void forget(const std::string& node_id);
  bool alive(const std::string& node_id, int64_t now_ms) const;
  int64_t last_seen_ms(const std::string& node_id) const;  // 0 = never (since this server started)
  int64_t interval_ms() const { return interval_ms_; }

 private:
  int64_t interval_ms_, ttl_ms_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, int64_t> last_;
};

}  // namespace aicloud
