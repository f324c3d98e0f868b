#include "capacity/leases.h"

#include <chrono>
#include <random>

#include "util/log.h"
#include "util/thread_name.h"
#include "util/time.h"

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

// ---- NodeSignals ----

namespace {
uint64_t random_epoch() {
  std::random_device rd;
  uint64_t e = (uint64_t(rd()) << 32) ^ uint64_t(rd()) ^ uint64_t(now_us_monotonic());
  return e == 0 ? 1 : e;
}
}  // namespace

NodeSignals::NodeSignals(size_t max_held) : epoch_(random_epoch()), max_held_(max_held) {}

NodeSignals::~NodeSignals() {
  std::vector<std::shared_ptr<Waiter>> drop;  // destroyed outside the lock
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    for (auto& [id, n] : nodes_) {
      if (n.held) drop.push_back(std::move(n.held));
    }
    for (auto& w : ready_) drop.push_back(std::move(w));
    ready_.clear();
    held_ = 0;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t NodeSignals::clock_ms() { return now_us_monotonic() / 1000; }

uint64_t NodeSignals::version(const std::string& node) const {
  std::lock_guard lk(mu_);
  auto it = nodes_.find(node);
  return it == nodes_.end() ? 0 : it->second.version;
}

void NodeSignals::bump(const std::string& node) {
  std::lock_guard lk(mu_);
  Node& n = nodes_[node];
  ++n.version;
  if (n.held) {
    ready_.push_back(std::move(n.held));
    n.held.reset();
    --held_;
    cv_.notify_one();
  }
}

uint64_t NodeSignals::arrive(const std::string& node) {
  std::shared_ptr<Waiter> old;
  uint64_t seq;
  {
    std::lock_guard lk(mu_);
    Node& n = nodes_[node];
    seq = ++n.latest_seq;
    if (n.held) {
      old = std::move(n.held);
      n.held.reset();
      --held_;
    }
  }
  if (old) old->fire(Why::kSuperseded);
  return seq;
}

NodeSignals::Hold NodeSignals::hold(const std::string& node, uint64_t seq, uint64_t seen, int64_t deadline_ms,
                                    Fire fire) {
  std::shared_ptr<Waiter> old;
  {
    std::lock_guard lk(mu_);
    Node& n = nodes_[node];
    if (seq != n.latest_seq) return Hold::kSuperseded;
    if (n.version != seen) return Hold::kChanged;
    if (stopping_ || held_ >= max_held_) return Hold::kFull;
    if (n.held) {  // not expected (arrive() took it), but never hold two
      old = std::move(n.held);
      --held_;
    }
    // Not make_shared: a deadline's weak_ptr would keep the whole waiter (its callback and the
    // response it holds) allocated until the deadline passes.
    n.held = std::shared_ptr<Waiter>(new Waiter{node, seq, seen, deadline_ms, std::move(fire)});
    ++held_;
    bool earliest = deadlines_.empty() || deadline_ms < deadlines_.top().first;
    deadlines_.emplace(deadline_ms, n.held);
    if (!thread_.joinable()) {
      thread_ = std::thread([this] {
        name_this_thread("leases");
        run();
      });
    } else if (earliest) {
      cv_.notify_one();
    }
  }
  if (old) old->fire(Why::kSuperseded);
  return Hold::kHeld;
}

bool NodeSignals::take(const std::string& node, uint64_t seq) {
  std::shared_ptr<Waiter> w;  // destroyed outside the lock
  std::lock_guard lk(mu_);
  auto it = nodes_.find(node);
  if (it == nodes_.end() || !it->second.held || it->second.held->seq != seq) return false;
  w = std::move(it->second.held);
  it->second.held.reset();
  --held_;
  return true;
}

size_t NodeSignals::held() const {
  std::lock_guard lk(mu_);
  return held_;
}

bool NodeSignals::claim_locked(const std::shared_ptr<Waiter>& w) {
  auto it = nodes_.find(w->node);
  if (it == nodes_.end() || it->second.held != w) return false;
  it->second.held.reset();
  --held_;
  return true;
}

// The signals thread: fires woken waiters (kChanged) and expired ones (kTimeout), outside the lock.
void NodeSignals::run() {
  std::unique_lock lk(mu_);
  while (!stopping_) {
    std::vector<std::pair<std::shared_ptr<Waiter>, Why>> due;
    for (auto& w : ready_) due.emplace_back(std::move(w), Why::kChanged);
    ready_.clear();
    int64_t now = clock_ms();
    while (!deadlines_.empty() && deadlines_.top().first <= now) {
      auto w = deadlines_.top().second.lock();
      deadlines_.pop();
      if (w && claim_locked(w)) due.emplace_back(std::move(w), Why::kTimeout);
    }
    if (!due.empty()) {
      lk.unlock();
      for (auto& [w, why] : due) {
        try {
          w->fire(why);
        } catch (const std::exception& e) {
          spdlog::error("long-poll answer for {} failed: {}", w->node, e.what());
        }
      }
      due.clear();  // the waiters (and what they hold) go outside the lock
      lk.lock();
      continue;
    }
    if (deadlines_.empty()) {
      cv_.wait(lk);
    } else {
      cv_.wait_for(lk, std::chrono::milliseconds(std::max<int64_t>(1, deadlines_.top().first - now)));
    }
  }
}

}  // namespace aicloud
