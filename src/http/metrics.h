// Request metrics in Prometheus text format: requests by route and status, latency histograms
// by route, open connections. Recording is lock-free: each thread adds to counters of its own
// shard (one of kShards, given out in turn), so that the io threads, all counting the same hot
// routes, do not hand the same cache lines back and forth on every request; render() sums them.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace aicloud::http {

class Metrics {
 public:
  // Latency bucket upper bounds, seconds.
  static constexpr std::array<double, 14> kBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                      0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   5.0};

  // route_names[i] labels route i; one extra slot is used for unmatched requests.
  explicit Metrics(std::vector<std::string> route_names, std::vector<std::string> route_methods);

  void record(int route, unsigned status, int64_t latency_us);
  std::string render(int64_t open_connections) const;

 private:
  struct alignas(64) PerRoute {
    std::atomic<uint64_t> buckets[kBuckets.size() + 1] = {};
    std::atomic<uint64_t> sum_us{0};
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> by_status[600] = {};
  };
  static constexpr size_t kShards = 4;
  PerRoute& at(size_t shard, size_t route) const { return routes_[shard * names_.size() + route]; }

  std::vector<std::string> names_, methods_;
  std::unique_ptr<PerRoute[]> routes_;  // kShards x names_.size()
};

}  // namespace aicloud::http
