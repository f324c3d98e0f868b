// Rate limits of the model gateway: requests per minute and tokens per minute, per project and
// model, and optionally per API key and model, as token buckets held in memory.
//
// Limits are configured per project and model (the store's "rate_limit" objects, written by
// /v1/organization/projects/{id}/rate_limits). The hot path never reads the store: a background
// thread reloads the whole table into memory when the store's write_generation() moved (checked
// every kRefreshMs), and at least every kFullReloadMs for writes made by other servers.
//
// A bucket holds at most the per-minute limit and refills continuously at limit/60 s. A request
// takes 1 from the request buckets and reserves tokens from the token buckets: max_tokens (or
// kDefaultMaxTokens when the request does not say) plus an estimate of the prompt (its bytes / 4;
// for messages or token arrays, the whole body's bytes / 4).
// When the request ends, settle() gives back the difference to the real usage (or takes more:
// a bucket may go into debt, so that a client that under-estimates still pays).
//
// A model with no explicit limit for a project gets the defaults below (generous; an operator
// lowers them per project). Per-key limits are 0 (= none) unless set on the project's limit.
#pragma once
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "store/store.h"
#include "util/per_thread.h"

namespace aicloud::gateway {

inline constexpr int64_t kDefaultRequestsPerMinute = 10'000;
inline constexpr int64_t kDefaultTokensPerMinute = 10'000'000;
inline constexpr int64_t kDefaultMaxTokens = 256;  // reserved when a request has no max_tokens
inline constexpr int64_t kMaxLimit = 1'000'000'000'000;  // the largest value the API accepts

// One project's limits for one model. 0 in a per-key field = no per-key limit.
struct RateLimits {
  int64_t requests_per_minute = kDefaultRequestsPerMinute;
  int64_t tokens_per_minute = kDefaultTokensPerMinute;
  int64_t requests_per_minute_per_key = 0;
  int64_t tokens_per_minute_per_key = 0;
};

// The store object: kind "rate_limit", lookup "<project_id>/<model>", data holds the fields.
inline constexpr const char* kRateLimitKind = "rate_limit";
std::string rate_limit_lookup(const std::string& project_id, const std::string& model);
// The same text written into out (replacing what it held): no allocation once out has room.
void rate_limit_lookup(std::string& out, const std::string& project_id, const std::string& model);
RateLimits rate_limits_from(const nlohmann::json& data, const RateLimits& defaults = {});
// The operator's defaults for every project and model without limits of its own: the
// "default_rate_limits" of /admin/v1/settings (`settings` is read_settings()), else the constants
// above.
RateLimits default_rate_limits(const nlohmann::json& settings);
// OpenAI's project.rate_limit object for a model.
nlohmann::json rate_limit_json(const std::string& model, const RateLimits& l);

class RateLimiter {
  struct Bucket {
    double level = 0;  // may go negative (debt after a correction)
    int64_t last_ms = 0;
    int64_t capacity = 0;
  };

 public:
  static constexpr int kRefreshMs = 100;
  static constexpr int kFullReloadMs = 5'000;

  explicit RateLimiter(Store& store);  // loads the table, then starts the refresh thread
  ~RateLimiter();
  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // The state to report in x-ratelimit-* headers: the most constraining bucket of each kind.
  struct Report {
    int64_t limit_requests = 0, remaining_requests = 0, reset_requests_ms = 0;
    int64_t limit_tokens = 0, remaining_tokens = 0, reset_tokens_ms = 0;
  };
  // What an allowed request took from the token buckets, for settle(): the buckets themselves,
  // so that settling finds them without building their names and hashing them again (valid until
  // the next sweep of idle buckets; then settle() looks them up by name).
  class Reservation {
   public:
    int64_t tokens() const { return tokens_; }

   private:
    friend class RateLimiter;
    int64_t tokens_ = 0;
    uint64_t sweep_ = 0;
    std::array<Bucket*, 2> buckets_{};
    size_t n_ = 0;
  };
  struct Decision {
    bool allowed = false;
    std::string exceeded;        // "requests" or "tokens" when refused
    int64_t retry_after_ms = 0;  // when refused: until the bucket holds enough
    Report report;
    Reservation reserved;  // when allowed: what settle() corrects
  };

  // Takes one request and `tokens` from the project's (and the key's) buckets for `model`, or
  // nothing at all when any of them is short.
  Decision acquire(const std::string& project_id, const std::string& key_id, const std::string& model, int64_t tokens);
  // The request used `used` tokens where `reserved` were taken: the difference goes back. The
  // names are those acquire() was given.
  void settle(const Reservation& reserved, const std::string& project_id, const std::string& key_id,
              const std::string& model, int64_t used);

  RateLimits limits_for(const std::string& project_id, const std::string& model) const;
  void reload();  // reads the table now (tests; the refresh thread)

  // "1s", "6m0s", "120ms": the duration format of OpenAI's x-ratelimit-reset-* headers.
  static std::string format_duration(int64_t ms);
  // The x-ratelimit-* headers of a report, as header lines ("Name: value\r\n" each: what
  // http::Response::fields holds), appended to out (an answer's field lines, which the request
  // id joins).
  // It needs kHeaderLinesRoom bytes of capacity beyond out's size (six lines at their longest)
  // not to reallocate.
  static void append_header_lines(std::string& out, const Report& r);
  static constexpr size_t kHeaderLinesRoom = 432;

 private:
  void refill(Bucket& b, int64_t capacity, int64_t now) const;
  void run();

  Store& store_;
  mutable std::mutex table_mu_;
  std::shared_ptr<const std::unordered_map<std::string, RateLimits>> table_;  // lookup -> limits
  RateLimits defaults_;  // the operator's, for what the table lacks (guarded by table_mu_)
  uint64_t loaded_generation_ = 0;
  // Moved (under table_mu_) whenever table_ or defaults_ is: each thread keeps the pair it last
  // saw and takes the lock only when this has moved (a lock and a reference per request were
  // cache lines the io threads handed back and forth).
  std::atomic<uint64_t> table_version_{0};
  const uint64_t id_;  // this limiter among those made (a thread's kept pair names its limiter)

  std::mutex mu_;  // the buckets
  // By bucket_key(); a node's Bucket stays where it is until a sweep erases it, so pointers to it
  // (a thread's kept ones, a Reservation's) are good while sweeps_ has not moved.
  std::unordered_map<std::string, Bucket> buckets_;
  size_t sweep_at_ = 100'000;
  uint64_t sweeps_ = 0;

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace aicloud::gateway
