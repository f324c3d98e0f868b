// Two small counting structures behind the free-capacity index. They are what lets a decision
// look at the few places that can hold a workload instead of at every node.
#pragma once
#include <cstdint>
#include <vector>

namespace aicloud::sched {

// How many nodes have exactly k free GPUs (k = 0..64), so that "how many nodes have at least g
// free" is a short sum rather than a scan.
class Hist {
 public:
  [[gnu::always_inline]] void add(int k, int delta) {
    if (k >= static_cast<int>(c_.size())) grow(k);
    c_[k] += delta;
  }
  int at_least(int g) const {
    int n = 0;
    for (int k = g < 0 ? 0 : g; k < static_cast<int>(c_.size()); ++k) n += c_[k];
    return n;
  }
  int count(int k) const { return k < static_cast<int>(c_.size()) ? c_[k] : 0; }
  int top() const { return static_cast<int>(c_.size()) - 1; }  // largest key ever seen

 private:
  [[gnu::noinline]] void grow(int k) { c_.resize(k + 1, 0); }  // rare: keeps add() small enough to inline
  std::vector<int> c_;
};

// Items (small dense ids) kept in buckets by an integer key, with O(1) insert, move and erase.
// Used for "NVLink domains of a pool by free GPUs" (iterate from a key upward: best fit).
// Order inside a bucket is arbitrary but deterministic for a given sequence of calls.
class BucketIndex {
 public:
  void set(uint32_t item, int key) {
    if (item >= key_.size()) {
      key_.resize(item + 1, -1);
      pos_.resize(item + 1, 0);
    }
    if (key_[item] == key) return;
    if (key_[item] >= 0) erase(item);
    if (key >= static_cast<int>(buckets_.size())) buckets_.resize(key + 1);
    key_[item] = key;
    pos_[item] = static_cast<uint32_t>(buckets_[key].size());
    buckets_[key].push_back(item);
  }
  void erase(uint32_t item) {
    if (item >= key_.size() || key_[item] < 0) return;
    auto& b = buckets_[key_[item]];
    uint32_t p = pos_[item];
    b[p] = b.back();
    pos_[b[p]] = p;
    b.pop_back();
    key_[item] = -1;
  }
  bool contains(uint32_t item) const { return item < key_.size() && key_[item] >= 0; }
  int key(uint32_t item) const { return item < key_.size() ? key_[item] : -1; }
  int max_key() const { return static_cast<int>(buckets_.size()) - 1; }
  const std::vector<uint32_t>& bucket(int key) const {
    static const std::vector<uint32_t> kEmpty;
    return key >= 0 && key < static_cast<int>(buckets_.size()) ? buckets_[key] : kEmpty;
  }

 private:
  std::vector<std::vector<uint32_t>> buckets_;
  std::vector<int32_t> key_;  // -1 = absent
  std::vector<uint32_t> pos_;
};

}  // namespace aicloud::sched
