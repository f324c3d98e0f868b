// Node heartbeats as leases, held in memory: a heartbeat renews a node's lease without touching
// the database (10,000 agents at one beat per 5 s would otherwise be 2,000 writes a second).
// A node whose lease has expired (3 missed beats) is not-ready. After a server restart every node
// is not-ready until its next beat, which is at most one interval away.
//
// And the agents' long-polls (NodeSignals): each node has a version, bumped after every committed
// write of its assignments or execs, and at most one held GET /agent/v1/assignments, answered
// when that version moves (and what the agent acts on changed), when its wait ends, or at once
// when the server stops. In memory only: a restarted server starts a new epoch.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace aicloud {

// Per-node change signals and held requests. Thread-safe. Callbacks (`Fire`) run outside its
// lock: kChanged and kTimeout on its own thread (they may read the store and answer), kSuperseded
// on the thread of the request that superseded (they must only answer).
class NodeSignals {
 public:
  enum class Why { kChanged, kTimeout, kSuperseded };
  using Fire = std::function<void(Why)>;
  enum class Hold { kHeld, kChanged, kSuperseded, kFull };

  explicit NodeSignals(size_t max_held = 50'000);
  ~NodeSignals();  // drops what is held without firing (the server is gone by then)
  NodeSignals(const NodeSignals&) = delete;
  NodeSignals& operator=(const NodeSignals&) = delete;

  uint64_t epoch() const { return epoch_; }  // random per process: versions of another server mean nothing
  uint64_t version(const std::string& node) const;
  // After a commit that wrote node's assignments or execs: wakes its held request (if any).
  void bump(const std::string& node);
  // A new request for node's assignments: its sequence number. A held older request of the
  // node is superseded (fired with kSuperseded): one held request per node, the newest.
  uint64_t arrive(const std::string& node);
  // Holds request `seq` of node until node's version moves past `seen` (kChanged), until
  // deadline_ms (kTimeout, on clock_ms()), or until superseded. Returns kHeld, or why not:
  // kChanged (the version already moved: look again now), kSuperseded (a newer request of the
  // node arrived: answer this one so), kFull (too many held: answer now).
  Hold hold(const std::string& node, uint64_t seq, uint64_t seen, int64_t deadline_ms, Fire fire);
  // Takes request `seq` of node out without firing it (its client went away, or the server
  // stops and the caller answers it). True if it was held.
  bool take(const std::string& node, uint64_t seq);
  size_t held() const;
  static int64_t clock_ms();  // monotonic milliseconds, for deadlines

 private:
  struct Waiter {
    std::string node;
    uint64_t seq = 0, seen = 0;
    int64_t deadline_ms = 0;
    Fire fire;
  };
  struct Node {
    uint64_t version = 0;
    uint64_t latest_seq = 0;
    std::shared_ptr<Waiter> held;
  };
  void run();
  bool claim_locked(const std::shared_ptr<Waiter>& w);

  const uint64_t epoch_;
  const size_t max_held_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<std::string, Node> nodes_;
  size_t held_ = 0;
  std::vector<std::shared_ptr<Waiter>> ready_;  // woken by bump(), to fire on the thread
  using Deadline = std::pair<int64_t, std::weak_ptr<Waiter>>;
  struct Later {
    bool operator()(const Deadline& a, const Deadline& b) const { return a.first > b.first; }
  };
  std::priority_queue<Deadline, std::vector<Deadline>, Later> deadlines_;  // lazily pruned
  bool stopping_ = false;
  std::thread thread_;  // started by the first hold()
};

class NodeLeases {
 public:
  explicit NodeLeases(int64_t interval_ms = 5000, int missed_beats = 3)
      : interval_ms_(interval_ms), ttl_ms_(interval_ms * missed_beats), signals_(std::make_shared<NodeSignals>()) {}

  void renew(const std::string& node_id, int64_t now_ms);
  void forget(const std::string& node_id);
  bool alive(const std::string& node_id, int64_t now_ms) const;
  int64_t last_seen_ms(const std::string& node_id) const;  // 0 = never (since this server started)
  int64_t interval_ms() const { return interval_ms_; }

  // The nodes' long-poll signals (shared, so that a store hook can hold them weakly).
  NodeSignals& signals() { return *signals_; }
  std::weak_ptr<NodeSignals> signals_weak() const { return signals_; }

 private:
  int64_t interval_ms_, ttl_ms_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, int64_t> last_;
  std::shared_ptr<NodeSignals> signals_;
};

}  // namespace aicloud
