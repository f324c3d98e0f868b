// State kept per thread, so that the io threads do not write the same cache lines for every
// request (a line written by two cores moves between their caches each time):
//   - counters that each thread adds to a shard of its own (shards are given out in turn as
//     threads first count) and a reader sums;
//   - ids for objects whose per-thread caches must tell which object they came from.
#pragma once
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace aicloud {

// This thread's shard among n (the same for every sharded structure: given out in turn).
inline size_t thread_shard(size_t n) {
  static std::atomic<size_t> next{0};
  thread_local const size_t mine = next.fetch_add(1, std::memory_order_relaxed);
  return mine % n;
}

// A number no other object of this process has had: a per-thread cache keeps its owner's, since
// an owner's address can be reused by a later one.
inline uint64_t new_instance_id() {
  static std::atomic<uint64_t> made{0};
  return made.fetch_add(1) + 1;
}

class ShardedCounter {
 public:
  void add(uint64_t n = 1) { shards_[thread_shard(kShards)].n.fetch_add(n, std::memory_order_relaxed); }
  uint64_t load() const {
    uint64_t sum = 0;
    for (const auto& s : shards_) sum += s.n.load(std::memory_order_relaxed);
    return sum;
  }

 private:
  static constexpr size_t kShards = 4;
  struct alignas(64) Shard {
    std::atomic<uint64_t> n{0};
  };
  std::array<Shard, kShards> shards_;
};

}  // namespace aicloud
