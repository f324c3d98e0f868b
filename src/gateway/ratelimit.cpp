#include "gateway/ratelimit.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>

#include "util/log.h"
#include "util/text_writer.h"
#include "util/thread_name.h"

namespace aicloud::gateway {

namespace {

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Written into k, a per-thread buffer (its capacity kept): a bucket's key is longer than a
// string's inline capacity, so building one per lookup was an allocation, four per request.
void bucket_key(std::string& k, char scope, const std::string& id, const std::string& model, char what) {
  k.clear();
  k += scope;
  k += '\x1f';
  k += id;
  k += '\x1f';
  k += model;
  k += '\x1f';
  k += what;
}
thread_local std::string tl_key;

// Milliseconds until a bucket refilling at capacity/min holds `need`.
int64_t ms_until(double level, double need, int64_t capacity) {
  if (level >= need || capacity <= 0) return 0;
  return int64_t(std::ceil((need - level) * 60'000.0 / double(capacity)));
}

}  // namespace

void rate_limit_lookup(std::string& out, const std::string& project_id, const std::string& model) {
  out.assign(project_id).append("/").append(model);
}

std::string rate_limit_lookup(const std::string& project_id, const std::string& model) {
  std::string out;
  rate_limit_lookup(out, project_id, model);
  return out;
}

RateLimits default_rate_limits(const nlohmann::json& settings) {
  RateLimits l;
  auto d = settings.find("default_rate_limits");
  if (d == settings.end() || !d->is_object()) return l;
  l.requests_per_minute = d->value("max_requests_per_1_minute", l.requests_per_minute);
  l.tokens_per_minute = d->value("max_tokens_per_1_minute", l.tokens_per_minute);
  return l;
}

RateLimits rate_limits_from(const nlohmann::json& d, const RateLimits& defaults) {
  RateLimits l = defaults;
  l.requests_per_minute = d.value("max_requests_per_1_minute", l.requests_per_minute);
  l.tokens_per_minute = d.value("max_tokens_per_1_minute", l.tokens_per_minute);
  l.requests_per_minute_per_key = d.value("max_requests_per_1_minute_per_key", int64_t(0));
  l.tokens_per_minute_per_key = d.value("max_tokens_per_1_minute_per_key", int64_t(0));
  return l;
}

nlohmann::json rate_limit_json(const std::string& model, const RateLimits& l) {
  return {{"object", "project.rate_limit"},
          {"id", "rl-" + model},
          {"model", model},
          {"max_requests_per_1_minute", l.requests_per_minute},
          {"max_tokens_per_1_minute", l.tokens_per_minute},
          {"max_requests_per_1_minute_per_key", l.requests_per_minute_per_key},
          {"max_tokens_per_1_minute_per_key", l.tokens_per_minute_per_key}};
}

RateLimiter::RateLimiter(Store& store) : store_(store), id_(new_instance_id()) {
  table_ = std::make_shared<const std::unordered_map<std::string, RateLimits>>();
  try {
    reload();
  } catch (const std::exception& e) {
    spdlog::error("rate limits: could not load the table: {}", e.what());
  }
  thread_ = std::thread([this] {
    name_this_thread("ratelimits");
    run();
  });
}

RateLimiter::~RateLimiter() {
  {
    std::lock_guard lk(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RateLimiter::reload() {
  uint64_t gen = store_.write_generation();  // read first: a write during the load triggers another
  auto table = std::make_shared<std::unordered_map<std::string, RateLimits>>();
  RateLimits defaults;
  {
    auto tx = store_.begin(false);
    if (auto s = tx->get("settings", "settings")) defaults = default_rate_limits(s->data);
    ListQuery q;
    q.kind = kRateLimitKind;
    for (const auto& o : tx->all(q)) (*table)[o.lookup] = rate_limits_from(o.data, defaults);
  }
  std::lock_guard lk(table_mu_);
  table_ = std::move(table);
  defaults_ = defaults;
  loaded_generation_ = gen;
  table_version_.fetch_add(1);
}

void RateLimiter::run() {
  int64_t last_full = steady_ms();
  std::unique_lock lk(stop_mu_);
  while (!stop_cv_.wait_for(lk, std::chrono::milliseconds(kRefreshMs), [this] { return stopping_; })) {
    lk.unlock();
    uint64_t loaded;
    {
      std::lock_guard tl(table_mu_);
      loaded = loaded_generation_;
    }
    int64_t now = steady_ms();
    if (store_.write_generation() != loaded || now - last_full >= kFullReloadMs) {
      try {
        reload();
        last_full = now;
      } catch (const std::exception& e) {
        spdlog::warn("rate limits: reload failed (keeping the previous table): {}", e.what());
      }
    }
    lk.lock();
  }
}

RateLimits RateLimiter::limits_for(const std::string& project_id, const std::string& model) const {
  struct Seen {
    uint64_t limiter = 0, version = 0;
    std::shared_ptr<const std::unordered_map<std::string, RateLimits>> table;
    RateLimits defaults;
    std::string lookup;  // rate_limit_lookup's text, kept here: no allocation per request
  };
  thread_local Seen seen;
  if (seen.limiter != id_ || seen.version != table_version_.load()) {
    std::lock_guard lk(table_mu_);
    seen.limiter = id_;
    seen.version = table_version_.load();
    seen.table = table_;
    seen.defaults = defaults_;
  }
  rate_limit_lookup(seen.lookup, project_id, model);
  auto it = seen.table->find(seen.lookup);
  return it == seen.table->end() ? seen.defaults : it->second;
}

// Refills b up to capacity; a changed limit keeps what was used (the level moves by the change).
void RateLimiter::refill(Bucket& b, int64_t capacity, int64_t now) const {
  if (b.last_ms == 0) {
    b.level = double(capacity);
  } else {
    if (b.capacity != capacity) b.level += double(capacity - b.capacity);
    if (now > b.last_ms) b.level += double(now - b.last_ms) * double(capacity) / 60'000.0;
    b.level = std::min(b.level, double(capacity));
  }
  b.capacity = capacity;
  b.last_ms = std::max(now, b.last_ms);
}

RateLimiter::Decision RateLimiter::acquire(const std::string& project_id, const std::string& key_id,
                                           const std::string& model, int64_t tokens) {
  RateLimits lim = limits_for(project_id, model);
  int64_t now = steady_ms();
  Decision d;
  // Each thread keeps, per (project, key, model), the buckets it has used: one lookup in a map of
  // its own, where finding up to four buckets by name in buckets_ built and hashed each name
  // under mu_ (on nodes that the other io threads' lookups also read).
  struct Kept {
    uint64_t limiter = 0, sweeps = 0;
    std::array<Bucket*, 4> b{};  // project requests, project tokens, key requests, key tokens
  };
  static constexpr size_t kKeptLimit = 10'000;
  thread_local std::unordered_map<std::string, Kept> kept;
  thread_local std::string kept_key;
  kept_key.clear();
  kept_key.append(project_id).append(1, '\x1f').append(key_id).append(1, '\x1f').append(model);
  auto found = kept.find(kept_key);
  if (found == kept.end()) {
    if (kept.size() >= kKeptLimit) kept.clear();
    found = kept.emplace(kept_key, Kept{}).first;
  }
  Kept& k = found->second;
  std::lock_guard lk(mu_);
  if (buckets_.size() > sweep_at_) {  // forget full buckets: a new one starts full anyway
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      refill(it->second, it->second.capacity, now);
      it = it->second.level >= double(it->second.capacity) ? buckets_.erase(it) : std::next(it);
    }
    sweep_at_ = std::max<size_t>(100'000, 2 * buckets_.size());  // amortized: never a sweep per request
    ++sweeps_;
  }
  if (k.limiter != id_ || k.sweeps != sweeps_) k = Kept{id_, sweeps_, {}};
  struct Use {
    Bucket* b;
    int64_t cap;
  };
  // The project's bucket and the key's of each kind (two at most: no allocation).
  struct Uses {
    std::array<Use, 2> a;
    size_t n = 0;
    const Use* begin() const { return a.data(); }
    const Use* end() const { return a.data() + n; }
  } req, tok;
  auto use = [&](Uses& v, size_t slot, char scope, const std::string& id, char what, int64_t cap) {
    if (!k.b[slot]) {
      bucket_key(tl_key, scope, id, model, what);
      k.b[slot] = &buckets_[tl_key];
    }
    Bucket& b = *k.b[slot];
    refill(b, cap, now);
    v.a[v.n++] = {&b, cap};
  };
  use(req, 0, 'p', project_id, 'r', lim.requests_per_minute);
  use(tok, 1, 'p', project_id, 't', lim.tokens_per_minute);
  if (!key_id.empty() && lim.requests_per_minute_per_key > 0) use(req, 2, 'k', key_id, 'r', lim.requests_per_minute_per_key);
  if (!key_id.empty() && lim.tokens_per_minute_per_key > 0) use(tok, 3, 'k', key_id, 't', lim.tokens_per_minute_per_key);

  for (const Use& u : req) {
    if (u.b->level < 1.0) {
      d.exceeded = "requests";
      d.retry_after_ms = std::max(d.retry_after_ms, ms_until(u.b->level, 1.0, u.cap));
    }
  }
  if (d.exceeded.empty()) {
    for (const Use& u : tok) {
      if (double(tokens) > double(u.cap)) {  // never fits: a full minute is the honest answer
        d.exceeded = "tokens";
        d.retry_after_ms = std::max<int64_t>(d.retry_after_ms, 60'000);
      } else if (u.b->level < double(tokens)) {
        d.exceeded = "tokens";
        d.retry_after_ms = std::max(d.retry_after_ms, ms_until(u.b->level, double(tokens), u.cap));
      }
    }
  }
  d.allowed = d.exceeded.empty();
  if (d.allowed) {
    for (const Use& u : req) u.b->level -= 1.0;
    for (const Use& u : tok) u.b->level -= double(tokens);
    d.reserved.tokens_ = tokens;
    d.reserved.sweep_ = sweeps_;
    for (const Use& u : tok) d.reserved.buckets_[d.reserved.n_++] = u.b;
  }
  // Report the most constraining bucket of each kind.
  auto report = [](const Uses& v, int64_t& limit, int64_t& remaining, int64_t& reset) {
    bool first = true;
    for (const Use& u : v) {
      int64_t rem = std::max<int64_t>(0, int64_t(std::floor(u.b->level)));
      if (first || rem < remaining) {
        limit = u.cap;
        remaining = rem;
        reset = ms_until(u.b->level, double(u.cap), u.cap);
        first = false;
      }
    }
  };
  report(req, d.report.limit_requests, d.report.remaining_requests, d.report.reset_requests_ms);
  report(tok, d.report.limit_tokens, d.report.remaining_tokens, d.report.reset_tokens_ms);
  return d;
}

void RateLimiter::settle(const Reservation& r, const std::string& project_id, const std::string& key_id,
                         const std::string& model, int64_t used) {
  int64_t diff = r.tokens_ - std::max<int64_t>(0, used);
  if (diff == 0 || r.n_ == 0) return;
  int64_t now = steady_ms();
  auto give = [&](Bucket& b) {
    refill(b, b.capacity, now);
    b.level = std::min(b.level + double(diff), double(b.capacity));
  };
  std::lock_guard lk(mu_);
  if (r.sweep_ == sweeps_) {  // the buckets acquire() took from are where they were
    for (size_t i = 0; i < r.n_; ++i) give(*r.buckets_[i]);
    return;
  }
  // A sweep has run since: a bucket it erased was full (a new one starts full), so only those
  // still there are settled, found by name.
  for (auto [scope, id] : {std::pair<char, const std::string*>{'p', &project_id}, {'k', &key_id}}) {
    bucket_key(tl_key, scope, *id, model, 't');
    if (auto it = buckets_.find(tl_key); it != buckets_.end()) give(it->second);
  }
}

namespace {

// "1s", "6m0s", "120ms": OpenAI's duration format (format_duration); at most kMaxDuration bytes.
void put_duration(TextWriter& w, int64_t ms) {
  if (ms < 0) ms = 0;
  if (ms < 1000) {
    w.num(ms).put("ms");
    return;
  }
  int64_t s = ms / 1000, frac = ms % 1000;
  int64_t h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
  if (h) w.num(h).put('h');
  if (h || m) w.num(m).put('m');
  w.num(sec);
  if (frac) {  // milliseconds as a decimal fraction, without trailing zeros: 1.5s, 1.05s
    char f[3] = {char('0' + frac / 100), char('0' + frac / 10 % 10), char('0' + frac % 10)};
    size_t n = f[2] != '0' ? 3 : f[1] != '0' ? 2 : 1;
    w.put('.').put(std::string_view(f, n));
  }
  w.put('s');
}
constexpr size_t kMaxDuration = TextWriter::kMaxNumber + 12;  // hours, then "h59m59.999s"

}  // namespace

std::string RateLimiter::format_duration(int64_t ms) {
  std::string out;
  append_within(out, kMaxDuration, [ms](TextWriter& w) { put_duration(w, ms); });
  return out;
}

// The six x-ratelimit-* lines of every answer, each at most ~40 bytes of text, a number or a
// duration.
void RateLimiter::append_header_lines(std::string& out, const Report& r) {
  static_assert(kHeaderLinesRoom == 6 * (40 + kMaxDuration));
  append_within(out, kHeaderLinesRoom, [&r](TextWriter& w) {
    // The limit, what remains and when it is whole again, of one kind ("requests" or "tokens").
    auto kind = [&w](std::string_view what, int64_t limit, int64_t remaining, int64_t reset_ms) {
      w.put("x-ratelimit-limit-").put(what).put(": ").num(limit);
      w.put("\r\nx-ratelimit-remaining-").put(what).put(": ").num(remaining);
      w.put("\r\nx-ratelimit-reset-").put(what).put(": ");
      put_duration(w, reset_ms);
      w.put("\r\n");
    };
    kind("requests", r.limit_requests, r.remaining_requests, r.reset_requests_ms);
    kind("tokens", r.limit_tokens, r.remaining_tokens, r.reset_tokens_ms);
  });
}

}  // namespace aicloud::gateway
