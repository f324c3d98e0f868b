// MemoMap: the scheduler's memo of what it already worked out (the sentence that says why a
// workload is pending, a shape that failed), keyed by four words that hold every number it
// depends on. A flat table (open addressing, a power-of-two size, linear probing) over a deque of
// entries, so that a reference to a value stays good while others are added; entries are never
// erased one by one, only cleared all together. A saturated round asks it hundreds of questions:
// std::unordered_map spent a tenth of such a round hashing (a division per lookup) and
// allocating nodes.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

namespace aicloud::sched {

using MemoKey = std::array<uint64_t, 4>;

template <class V>
class MemoMap {
 public:
  // The value for `key`, default-constructed if it was not there; .second is true if it is new.
  std::pair<V*, bool> try_emplace(const MemoKey& key) {
    if ((items_.size() + 1) * 2 > slots_.size()) grow();
    size_t mask = slots_.size() - 1;
    for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
      uint32_t s = slots_[i];
      if (s == 0) {
        items_.emplace_back(key, V{});
        slots_[i] = static_cast<uint32_t>(items_.size());
        return {&items_.back().second, true};
      }
      if (items_[s - 1].first == key) return {&items_[s - 1].second, false};
    }
  }
  // The value for `key`, or null.
  const V* find(const MemoKey& key) const {
    if (slots_.empty()) return nullptr;
    size_t mask = slots_.size() - 1;
    for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
      uint32_t s = slots_[i];
      if (s == 0) return nullptr;
      if (items_[s - 1].first == key) return &items_[s - 1].second;
    }
  }
  size_t size() const { return items_.size(); }
  void clear() {
    items_.clear();
    std::fill(slots_.begin(), slots_.end(), 0);
  }

 private:
  static size_t hash(const MemoKey& k) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (uint64_t x : k) {
      h = (h ^ x) * 0xFF51AFD7ED558CCDull;
      h ^= h >> 32;
    }
    return static_cast<size_t>(h);
  }
  void grow() {  // to twice the size (64 at first), at most half full
    slots_.assign(slots_.empty() ? 64 : slots_.size() * 2, 0);
    size_t mask = slots_.size() - 1;
    for (uint32_t n = 0; n < items_.size(); ++n) {
      size_t i = hash(items_[n].first) & mask;
      while (slots_[i] != 0) i = (i + 1) & mask;
      slots_[i] = n + 1;
    }
  }

  std::deque<std::pair<MemoKey, V>> items_;
  std::vector<uint32_t> slots_;  // 0 = empty, else an index into items_ + 1
};

}  // namespace aicloud::sched
