#include "metering/meter.h"

#include <chrono>
#include <vector>

#include "util/log.h"

namespace aicloud {

Meter::Meter(Store& store) : store_(store), thread_([this] { run(); }) {}

Meter::~Meter() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Meter::record(UsageRecord r, std::function<void(bool)> on_durable) {
  {
    std::lock_guard lk(mu_);
    queue_.push_back({std::move(r), std::move(on_durable)});
  }
  cv_.notify_one();
}

void Meter::run() {
  std::vector<Item> batch;
  while (true) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() && stopping_) return;
      // No artificial delay: while one commit runs, the next group queues up behind it, so the
      // group size adapts to the load (one record when idle, hundreds under load).
      batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
      queue_.clear();
    }
    bool ok = true;
    auto t0 = std::chrono::steady_clock::now();
    try {
      store_.write([&](Tx& tx) {
        for (auto& it : batch) tx.usage_append(it.r);
      });
      committed_ += int64_t(batch.size());
      ++commits_;
      commit_us_ += std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    } catch (const std::exception& e) {
      ok = false;
      spdlog::error("metering: could not commit {} usage records: {}", batch.size(), e.what());
    }
    for (auto& it : batch) {
      if (it.done) it.done(ok);
    }
    batch.clear();
  }
}

std::string Meter::prometheus() const {
  return "# HELP aicloud_usage_records_committed_total Usage records made durable.\n"
         "# TYPE aicloud_usage_records_committed_total counter\naicloud_usage_records_committed_total " +
         std::to_string(records_committed()) +
         "\n# HELP aicloud_usage_commits_total Group commits of usage records (one fsync each under --sync full).\n"
         "# TYPE aicloud_usage_commits_total counter\naicloud_usage_commits_total " +
         std::to_string(commits()) +
         "\n# HELP aicloud_usage_commit_seconds_total Time spent in group commits of usage records.\n"
         "# TYPE aicloud_usage_commit_seconds_total counter\naicloud_usage_commit_seconds_total " +
         std::to_string(double(commit_micros()) / 1e6) + "\n";
}

}  // namespace aicloud
