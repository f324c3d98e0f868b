// Metering: every finished model request leaves one usage record, durable before the client sees
// the response complete. Records are group-committed: a writer thread takes everything queued,
// appends it in one transaction, commits (one fsync for the group), then runs each record's
// on_durable callback, which is where the gateway ends the client's response. So a response that
// completed never loses its record, even on kill -9, and the cost of durability is shared by all
// requests finishing in the same few milliseconds.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "store/store.h"

namespace aicloud {

class Meter {
 public:
  explicit Meter(Store& store);
  ~Meter();  // commits what is queued, then stops
  Meter(const Meter&) = delete;
  Meter& operator=(const Meter&) = delete;

  // Queues r; on_durable runs on the writer thread after the commit that holds it (or, if the
  // commit failed, with durable=false after the error was logged).
  void record(UsageRecord r, std::function<void(bool durable)> on_durable = nullptr);

  // Counters for /metrics and the benchmark: records per commit is the group size; each commit
  // is one fsync under --sync full.
  int64_t records_committed() const { return committed_.load(); }
  int64_t commits() const { return commits_.load(); }
  int64_t commit_micros() const { return commit_us_.load(); }  // time spent committing, in total
  std::string prometheus() const;  // the counters above in Prometheus text format

 private:
  void run();

  Store& store_;
  std::mutex mu_;
  std::condition_variable cv_;
  struct Item {
    UsageRecord r;
    std::function<void(bool)> done;
  };
  std::deque<Item> queue_;
  bool stopping_ = false;
  std::atomic<int64_t> committed_{0}, commits_{0}, commit_us_{0};
  std::thread thread_;
};

}  // namespace aicloud
