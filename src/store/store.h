// The store: durable state of the control plane behind a narrow interface.
//
// Every object is a JSON document with a few indexed columns (kind, id, org, project, parent,
// one unique lookup key per kind). API handlers only see Store/Tx, never SQL, so a PostgreSQL
// backend is one more implementation of these two classes. The audit chain and idempotency
// records have their own small tables because their access patterns differ (append-only,
// keyed by client key).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace aicloud {

struct Object {
  std::string kind;        // "organization", "project", "api_key", "user", "membership", ...
  std::string id;          // globally unique, readable prefix
  std::string org_id;      // owning organization ("" for global objects)
  std::string project_id;  // owning project ("" if none)
  std::string parent_id;   // a non-unique secondary index (e.g. a membership's user)
  std::string lookup;      // a unique secondary key within the kind ("" = none)
  int64_t created_at = 0;
  int64_t version = 0;     // bumped on each update; updates check it (optimistic concurrency)
  int64_t seq = 0;         // insertion order, for stable paging
  nlohmann::json data = nlohmann::json::object();
};

struct ListQuery {
  std::string kind;
  std::string org_id;      // filters: "" means any
  std::string project_id;
  std::string parent_id;
  std::string after;       // id of the last object of the previous page
  int limit = 20;
  bool newest_first = false;
};

struct Page {
  std::vector<Object> items;
  bool has_more = false;
};

struct AuditRecord {
  int64_t seq = 0;
  int64_t ts_ms = 0;
  std::string org_id;      // "" for operator-level actions
  std::string actor_type;  // operator, user, admin_key, project_key, anonymous
  std::string actor_id;
  std::string action;      // e.g. "project.created", "api_key.deleted"
  std::string resource_id;
  std::string request_id;
  std::string outcome;     // "success" or "error:<status>"
  nlohmann::json details = nlohmann::json::object();
  std::string prev_hash;   // hex sha256 of the previous record ("" for the first)
  std::string hash;        // hex sha256(prev_hash || canonical fields)
};

struct AuditQuery {
  std::string org_id;  // "" = all (operator)
  std::string actor_id, action, resource_id;
  int64_t since_ms = 0, until_ms = 0;  // 0 = unbounded
  int64_t before_seq = 0;              // paging: newest first
  int limit = 20;
};

struct IdempotencyRecord {
  std::string request_hash;
  int status = 0;
  std::string body;
  int64_t created_at = 0;
};

// One finished model request, as metered by the gateway (billing reads these).
struct UsageRecord {
  int64_t ts_ms = 0;
  std::string org_id, project_id, api_key_id, model, deployment_id, region;
  std::string endpoint;  // "chat.completions", "completions", "embeddings"
  int64_t input_tokens = 0, output_tokens = 0, cached_tokens = 0;
  int64_t latency_ms = 0;
  int status = 0;  // the HTTP status the client got
  std::string request_id;
};

// Usage summed per time bucket (and optionally per project, key, model) for one organization.
// Usage is kept per second: a record counts in the second its ts_ms falls in, and a query
// takes the seconds that start in [start_ms, end_ms) (exact for whole-second bounds and widths,
// as the usage API's are).
struct UsageQuery {
  std::string org_id;
  int64_t start_ms = 0, end_ms = 0;  // [start, end)
  int64_t bucket_ms = 86'400'000;
  bool by_project = false, by_key = false, by_model = false;
  std::string project_id, api_key_id, model;  // filters: "" = any
  std::string endpoint;                        // "" = any
};
struct UsageRow {
  int64_t bucket_start_ms = 0;
  std::string project_id, api_key_id, model;  // set when grouped by them
  int64_t input_tokens = 0, output_tokens = 0, cached_tokens = 0, requests = 0;
};

// A transaction. Destroyed without commit() = rolled back. Not thread-safe: one per request.
class Tx {
 public:
  virtual ~Tx() = default;

  virtual std::optional<Object> get(std::string_view kind, std::string_view id) = 0;
  virtual std::optional<Object> find(std::string_view kind, std::string_view lookup) = 0;
  virtual Page list(const ListQuery& q) = 0;
  // All objects of a kind matching the filters, in insertion order (internal scans, no paging).
  virtual std::vector<Object> all(const ListQuery& q) = 0;

  // insert sets seq/version/created_at (if 0). Throws StoreConflict on a duplicate id or lookup.
  virtual void insert(Object& o) = 0;
  // update requires o.version to match the stored one, then bumps it. Throws StoreConflict.
  virtual void update(Object& o) = 0;
  virtual bool remove(std::string_view kind, std::string_view id) = 0;

  virtual std::optional<AuditRecord> audit_last() = 0;
  virtual void audit_append(AuditRecord& r) = 0;  // r.seq is set
  virtual std::vector<AuditRecord> audit_list(const AuditQuery& q) = 0;
  // Every record in chain order, calling f for each (verification).
  virtual void audit_scan(const std::function<void(const AuditRecord&)>& f) = 0;

  virtual std::optional<IdempotencyRecord> idempotency_get(std::string_view scope, std::string_view key) = 0;
  virtual void idempotency_put(std::string_view scope, std::string_view key, const IdempotencyRecord& r) = 0;

  // Adds the records to the usage kept: per-second sums per organization, project, key, model,
  // deployment, region, endpoint and status (a record's request id is not kept).
  virtual void usage_append(const std::vector<UsageRecord>& records) = 0;
  // The newest usage journal segment whose records have been added (0: none yet).
  virtual uint64_t usage_folded_segment() = 0;
  virtual void set_usage_folded_segment(uint64_t segment) = 0;
  // Rows ordered by bucket, then by the grouping columns; empty buckets are not returned.
  virtual std::vector<UsageRow> usage_sum(const UsageQuery& q) = 0;

  virtual void commit() = 0;
};

struct StoreConflict : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An object that a committed write transaction inserted or updated (see Store::watch_commits).
struct WrittenObject {
  std::string kind, id, parent_id;
};

class Store {
 public:
  virtual ~Store() = default;
  // write=true takes the single writer lock for the whole transaction (BEGIN IMMEDIATE).
  virtual std::unique_ptr<Tx> begin(bool write) = 0;
  // A monotonically increasing number bumped by every committed write of objects (insert, update,
  // remove) in this process; caches of objects compare it to know whether what they hold may be
  // stale. Usage records, audit records and idempotency records do not move it: the meter folds
  // usage every 200 ms, and each fold made the rate limiter reload its whole table.
  virtual uint64_t write_generation() const = 0;

  // A hook for in-memory watchers (the agents' long-polls, api/compute_routes.cpp): after each
  // committed write transaction that inserted or updated objects of one of `kinds`, f gets them,
  // on the committing thread, which still holds the writer lock: f must be quick and must not
  // use the store. Set before serving (not synchronised with running transactions); a later
  // call replaces the hook. Removals are not reported.
  void watch_commits(std::vector<std::string> kinds, std::function<void(const std::vector<WrittenObject>&)> f) {
    watched_kinds_ = std::move(kinds);
    on_commit_ = std::move(f);
  }
  // For implementations: whether writes of this kind are reported, and the report.
  bool watched(std::string_view kind) const {
    for (const auto& k : watched_kinds_) if (k == kind) return true;
    return false;
  }
  void committed(const std::vector<WrittenObject>& written) const noexcept {
    try {
      if (on_commit_ && !written.empty()) on_commit_(written);
    } catch (...) {  // the transaction has committed: a watcher's failure must not undo that
    }
  }

  template <class F>
  auto read(F&& f) {
    auto tx = begin(false);
    return f(*tx);
  }
  template <class F>
  auto write(F&& f) {
    auto tx = begin(true);
    if constexpr (std::is_void_v<decltype(f(*tx))>) {
      f(*tx);
      tx->commit();
    } else {
      auto r = f(*tx);
      tx->commit();
      return r;
    }
  }

 private:
  std::vector<std::string> watched_kinds_;
  std::function<void(const std::vector<WrittenObject>&)> on_commit_;
};

struct StoreOptions {
  std::string path;          // the SQLite file
  bool sync_full = true;     // fsync every commit (power-loss safe); false = NORMAL (kill -9 safe)
};

// Opens (creating if needed) and migrates the SQLite store. Throws std::runtime_error with a
// message for the operator when the file is newer than this binary or cannot be opened.
std::unique_ptr<Store> open_sqlite_store(const StoreOptions& opts);

}  // namespace aicloud
