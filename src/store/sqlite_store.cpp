// SQLite implementation of Store: WAL mode, a pool of connections for concurrent readers and a
// process-wide writer mutex so writers queue in memory instead of spinning on SQLITE_BUSY.
// Checkpoints (copying the WAL back into the database file) run on a thread of their own rather
// than inside whichever commit crosses SQLite's 1,000-page threshold: that commit would otherwise
// copy and fsync megabytes while every writer behind it (the usage records of answers waiting to
// end) queues: the gateway's p99 at a steady 2,000 requests/s went from 3.5-5.6 ms to 1.3-1.8 ms
// (docs/PERFORMANCE.md §5).
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "store/migrations.h"
#include "store/store.h"
#include "util/thread_name.h"
#include "util/time.h"

namespace aicloud {
namespace {

using json = nlohmann::json;

class Conn {
 public:
  Conn(const std::string& path, bool sync_full) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw std::runtime_error("cannot open database " + path + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 10000);
    exec("PRAGMA journal_mode=WAL");
    exec(sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    exec("PRAGMA foreign_keys=ON");
    // A burst of writes that outran the checkpointer leaves the WAL file large; each reset after a
    // full checkpoint truncates it back to this size instead of keeping the high-water mark.
    exec("PRAGMA journal_size_limit=16777216");
  }
  ~Conn() {
    for (auto& [_, s] : stmts_) sqlite3_finalize(s);
    sqlite3_close(db_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw std::runtime_error("sqlite: " + msg + " in: " + sql.substr(0, 80));
    }
  }
  // One statement without results through the statement cache: BEGIN, COMMIT and ROLLBACK
  // run on every request, and sqlite3_exec would parse them again each time (about 7% of the
  // instructions of an authenticated GET).
  void exec_cached(const std::string& sql) {
    sqlite3_stmt* s = prepare(sql);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
      std::string msg = sqlite3_errmsg(db_);
      sqlite3_reset(s);
      throw std::runtime_error("sqlite: " + msg + " in: " + sql);
    }
    sqlite3_reset(s);
  }
  // A cached prepared statement, reset and with bindings cleared.
  sqlite3_stmt* prepare(const std::string& sql) {
    auto it = stmts_.find(sql);
    if (it != stmts_.end()) {
      sqlite3_reset(it->second);
      sqlite3_clear_bindings(it->second);
      return it->second;
    }
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v3(db_, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) {
      throw std::runtime_error(std::string("sqlite prepare: ") + sqlite3_errmsg(db_));
    }
    stmts_.emplace(sql, s);
    return s;
  }
  sqlite3* db() { return db_; }

 private:
  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*> stmts_;
};

// Binding and reading helpers.
struct Stmt {
  Conn& c;
  sqlite3_stmt* s;
  int i = 0;
  bool bound_static = false;  // bind_static() was used: the bindings are cleared when done
  Stmt(Conn& c, const std::string& sql) : c(c), s(c.prepare(sql)) {}
  ~Stmt() { rebind(); }
  Stmt& bind(std::string_view v) {
    sqlite3_bind_text(s, ++i, v.data(), int(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // Bound without a copy: v must stay as it is until the statement's bindings are cleared.
  Stmt& bind_static(std::string_view v) {
    bound_static = true;
    sqlite3_bind_text(s, ++i, v.data(), int(v.size()), SQLITE_STATIC);
    return *this;
  }
  Stmt& bind(int64_t v) {
    sqlite3_bind_int64(s, ++i, v);
    return *this;
  }
  Stmt& bind_null() {
    sqlite3_bind_null(s, ++i);
    return *this;
  }
  // Ready to run again with new bindings (those bound without a copy are cleared).
  void rebind() {
    sqlite3_reset(s);
    if (bound_static) sqlite3_clear_bindings(s);
    bound_static = false;
    i = 0;
  }
  // true while there is a row
  bool step() {
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if (rc == SQLITE_CONSTRAINT) throw StoreConflict(sqlite3_errmsg(c.db()));
    throw std::runtime_error(std::string("sqlite step: ") + sqlite3_errmsg(c.db()));
  }
  std::string text(int col) {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(s, col));
    return p ? std::string(p, size_t(sqlite3_column_bytes(s, col))) : std::string();
  }
  int64_t integer(int col) { return sqlite3_column_int64(s, col); }
};

// The start of every read of a table's rows: "SELECT <the columns read_* reads> FROM <table>".
constexpr std::string_view kSelectObjects =
    "SELECT seq, kind, id, org_id, project_id, parent_id, lookup, created_at, version, data FROM objects";

// SQL text from pieces, appended one by one: GCC 12 warns falsely (-Warray-bounds) on chains of
// operator+ over a temporary std::string once profile-guided inlining takes them in (make release).
std::string sql_text(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s += p;
  return s;
}

// Usage is kept as per-second sums (migration 3 -> 4): the records of one usage_append are
// summed per second and per (organization, project, key, model, deployment, region, endpoint,
// status) in memory, and each sum is added to its row with one upsert. A fold of a busy gateway
// (thousands of records, a few keys and models) is then a handful of rows, not a row per record.
int64_t second_of(int64_t ms) { return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000); }  // floor

// What a record is summed under: its second, then the texts and status of usage_seconds' key.
// (Views into the records, which outlive the sums: usage_append's argument.)
using UsageGroup = std::tuple<int64_t, std::string_view, std::string_view, std::string_view, std::string_view,
                              std::string_view, std::string_view, std::string_view, int>;
UsageGroup group_of(const UsageRecord& r) {
  return {second_of(r.ts_ms), r.org_id, r.project_id, r.api_key_id, r.model, r.deployment_id, r.region, r.endpoint,
          r.status};
}

struct UsageSum {
  UsageGroup group;
  int64_t requests = 0, input_tokens = 0, output_tokens = 0, cached_tokens = 0, latency_ms = 0;
};

// The sums of the records' groups, in the order each group first appears. Records mostly come in
// runs of one group (a fold holds a fraction of a second of a few keys' traffic), so each is
// compared with the group of the record before it first; the map is for the rest.
std::vector<UsageSum> usage_sums(const std::vector<UsageRecord>& records) {
  std::vector<UsageSum> sums;
  std::map<UsageGroup, size_t> index;
  size_t last = 0;
  for (const UsageRecord& r : records) {
    UsageGroup g = group_of(r);
    if (sums.empty() || sums[last].group != g) {
      auto [it, added] = index.try_emplace(g, sums.size());
      if (added) sums.push_back(UsageSum{g});
      last = it->second;
    }
    UsageSum& sum = sums[last];
    ++sum.requests;
    sum.input_tokens += r.input_tokens;
    sum.output_tokens += r.output_tokens;
    sum.cached_tokens += r.cached_tokens;
    sum.latency_ms += r.latency_ms;
  }
  return sums;
}

Object read_object(Stmt& st) {
  Object o;
  o.seq = st.integer(0);
  o.kind = st.text(1);
  o.id = st.text(2);
  o.org_id = st.text(3);
  o.project_id = st.text(4);
  o.parent_id = st.text(5);
  o.lookup = st.text(6);
  o.created_at = st.integer(7);
  o.version = st.integer(8);
  o.data = json::parse(st.text(9));
  return o;
}

AuditRecord read_audit(Stmt& st) {
  AuditRecord r;
  r.seq = st.integer(0);
  r.ts_ms = st.integer(1);
  r.org_id = st.text(2);
  r.actor_type = st.text(3);
  r.actor_id = st.text(4);
  r.action = st.text(5);
  r.resource_id = st.text(6);
  r.request_id = st.text(7);
  r.outcome = st.text(8);
  // Details that are not JSON (the file was edited by hand) must not make the log unreadable:
  // kept as text, they no longer match the record's hash and verification names the record.
  std::string details = st.text(9);
  r.details = json::parse(details, nullptr, false);
  if (r.details.is_discarded()) r.details = std::move(details);
  r.prev_hash = st.text(10);
  r.hash = st.text(11);
  return r;
}
constexpr std::string_view kSelectAudit =
    "SELECT seq, ts_ms, org_id, actor_type, actor_id, action, resource_id, request_id, outcome, details, "
    "prev_hash, hash FROM audit_log";

class SqliteStore;

class SqliteTx final : public Tx {
 public:
  SqliteTx(SqliteStore& store, std::unique_ptr<Conn> conn, bool write);
  ~SqliteTx() override;

  std::optional<Object> get(std::string_view kind, std::string_view id) override {
    Stmt st(*conn_, sql_text({kSelectObjects, " WHERE id=? AND kind=?"}));
    st.bind(id).bind(kind);
    if (!st.step()) return std::nullopt;
    return read_object(st);
  }
  std::optional<Object> find(std::string_view kind, std::string_view lookup) override {
    Stmt st(*conn_, sql_text({kSelectObjects, " WHERE kind=? AND lookup=?"}));
    st.bind(kind).bind(lookup);
    if (!st.step()) return std::nullopt;
    return read_object(st);
  }
  std::string where(const ListQuery& q) {
    std::string w = " WHERE kind=?";
    if (!q.org_id.empty()) w += " AND org_id=?";
    if (!q.project_id.empty()) w += " AND project_id=?";
    if (!q.parent_id.empty()) w += " AND parent_id=?";
    return w;
  }
  void bind_where(Stmt& st, const ListQuery& q) {
    st.bind(q.kind);
    if (!q.org_id.empty()) st.bind(q.org_id);
    if (!q.project_id.empty()) st.bind(q.project_id);
    if (!q.parent_id.empty()) st.bind(q.parent_id);
  }
  Page list(const ListQuery& q) override {
    std::string sql = sql_text({kSelectObjects, where(q)});
    if (!q.after.empty()) {
      // The cursor must be an object of this same list: an id of another kind or organization
      // pages nothing, so that it cannot tell whether (or when) that object exists.
      sql += sql_text({q.newest_first ? " AND seq < " : " AND seq > ", "(SELECT seq FROM objects", where(q),
                       " AND id=?)"});
    }
    sql += q.newest_first ? " ORDER BY seq DESC LIMIT ?" : " ORDER BY seq LIMIT ?";
    Stmt st(*conn_, sql);
    bind_where(st, q);
    if (!q.after.empty()) {
      bind_where(st, q);
      st.bind(q.after);
    }
    st.bind(int64_t(q.limit) + 1);
    Page p;
    while (st.step()) p.items.push_back(read_object(st));
    if (p.items.size() > size_t(q.limit)) {
      p.items.pop_back();
      p.has_more = true;
    }
    return p;
  }
  std::vector<Object> all(const ListQuery& q) override {
    Stmt st(*conn_, sql_text({kSelectObjects, where(q), " ORDER BY seq"}));
    bind_where(st, q);
    std::vector<Object> out;
    while (st.step()) out.push_back(read_object(st));
    return out;
  }
  void insert(Object& o) override {
    require_write();
    objects_written_ = true;
    if (o.created_at == 0) o.created_at = now_unix();
    o.version = 1;
    Stmt st(*conn_,
            "INSERT INTO objects(kind, id, org_id, project_id, parent_id, lookup, created_at, version, data) "
            "VALUES(?,?,?,?,?,?,?,?,?)");
    st.bind(o.kind).bind(o.id).bind(o.org_id).bind(o.project_id).bind(o.parent_id);
    if (o.lookup.empty()) st.bind_null(); else st.bind(o.lookup);
    st.bind(o.created_at).bind(o.version).bind(o.data.dump());
    st.step();
    o.seq = sqlite3_last_insert_rowid(conn_->db());
    note_written(o);
  }
  void update(Object& o) override {
    require_write();
    objects_written_ = true;
    Stmt st(*conn_,
            "UPDATE objects SET org_id=?, project_id=?, parent_id=?, lookup=?, version=version+1, data=? "
            "WHERE id=? AND kind=? AND version=?");
    st.bind(o.org_id).bind(o.project_id).bind(o.parent_id);
    if (o.lookup.empty()) st.bind_null(); else st.bind(o.lookup);
    st.bind(o.data.dump()).bind(o.id).bind(o.kind).bind(o.version);
    st.step();
    if (sqlite3_changes(conn_->db()) != 1) throw StoreConflict("object " + o.id + " changed concurrently");
    ++o.version;
    note_written(o);
  }
  bool remove(std::string_view kind, std::string_view id) override {
    require_write();
    objects_written_ = true;
    Stmt st(*conn_, "DELETE FROM objects WHERE id=? AND kind=?");
    st.bind(id).bind(kind);
    st.step();
    return sqlite3_changes(conn_->db()) == 1;
  }

  std::optional<AuditRecord> audit_last() override {
    Stmt st(*conn_, sql_text({kSelectAudit, " ORDER BY seq DESC LIMIT 1"}));
    if (!st.step()) return std::nullopt;
    return read_audit(st);
  }
  void audit_append(AuditRecord& r) override {
    require_write();
    Stmt st(*conn_,
            "INSERT INTO audit_log(ts_ms, org_id, actor_type, actor_id, action, resource_id, request_id, "
            "outcome, details, prev_hash, hash) VALUES(?,?,?,?,?,?,?,?,?,?,?)");
    st.bind(r.ts_ms).bind(r.org_id).bind(r.actor_type).bind(r.actor_id).bind(r.action).bind(r.resource_id);
    st.bind(r.request_id).bind(r.outcome).bind(r.details.dump()).bind(r.prev_hash).bind(r.hash);
    st.step();
    r.seq = sqlite3_last_insert_rowid(conn_->db());
  }
  std::vector<AuditRecord> audit_list(const AuditQuery& q) override {
    std::string sql = sql_text({kSelectAudit, " WHERE 1=1"});
    if (!q.org_id.empty()) sql += " AND org_id=?";
    if (!q.actor_id.empty()) sql += " AND actor_id=?";
    if (!q.action.empty()) sql += " AND action=?";
    if (!q.resource_id.empty()) sql += " AND resource_id=?";
    if (q.since_ms) sql += " AND ts_ms>=?";
    if (q.until_ms) sql += " AND ts_ms<=?";
    if (q.before_seq) sql += " AND seq<?";
    sql += " ORDER BY seq DESC LIMIT ?";
    Stmt st(*conn_, sql);
    if (!q.org_id.empty()) st.bind(q.org_id);
    if (!q.actor_id.empty()) st.bind(q.actor_id);
    if (!q.action.empty()) st.bind(q.action);
    if (!q.resource_id.empty()) st.bind(q.resource_id);
    if (q.since_ms) st.bind(q.since_ms);
    if (q.until_ms) st.bind(q.until_ms);
    if (q.before_seq) st.bind(q.before_seq);
    st.bind(int64_t(q.limit));
    std::vector<AuditRecord> out;
    while (st.step()) out.push_back(read_audit(st));
    return out;
  }
  void audit_scan(const std::function<void(const AuditRecord&)>& f) override {
    Stmt st(*conn_, sql_text({kSelectAudit, " ORDER BY seq"}));
    while (st.step()) f(read_audit(st));
  }

  std::optional<IdempotencyRecord> idempotency_get(std::string_view scope, std::string_view key) override {
    Stmt st(*conn_, "SELECT request_hash, status, body, created_at FROM idempotency WHERE scope=? AND key=?");
    st.bind(scope).bind(key);
    if (!st.step()) return std::nullopt;
    return IdempotencyRecord{st.text(0), int(st.integer(1)), st.text(2), st.integer(3)};
  }
  void idempotency_put(std::string_view scope, std::string_view key, const IdempotencyRecord& r) override {
    require_write();
    Stmt st(*conn_,
            "INSERT INTO idempotency(scope, key, request_hash, status, body, created_at) VALUES(?,?,?,?,?,?)");
    st.bind(scope).bind(key).bind(r.request_hash).bind(int64_t(r.status)).bind(r.body).bind(r.created_at);
    st.step();
  }

  void usage_append(const std::vector<UsageRecord>& records) override {
    require_write();
    if (records.empty()) return;
    Stmt st(*conn_,
            "INSERT INTO usage_seconds(org_id, ts_s, project_id, api_key_id, model, deployment_id, region, endpoint, "
            "status, requests, input_tokens, output_tokens, cached_tokens, latency_ms) "
            "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(org_id, ts_s, project_id, api_key_id, model, deployment_id, region, endpoint, status) DO UPDATE SET "
            "requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens, "
            "output_tokens = output_tokens + excluded.output_tokens, "
            "cached_tokens = cached_tokens + excluded.cached_tokens, latency_ms = latency_ms + excluded.latency_ms");
    for (const UsageSum& sum : usage_sums(records)) {
      const auto& [ts_s, org, project, key, model, deployment, region, endpoint, status] = sum.group;
      st.bind_static(org).bind(ts_s).bind_static(project).bind_static(key).bind_static(model);
      st.bind_static(deployment).bind_static(region).bind_static(endpoint).bind(int64_t(status));
      st.bind(sum.requests).bind(sum.input_tokens).bind(sum.output_tokens).bind(sum.cached_tokens).bind(sum.latency_ms);
      st.step();
      st.rebind();
    }
  }
  uint64_t usage_folded_segment() override {
    Stmt st(*conn_, "SELECT folded_segment FROM usage_journal WHERE id=1");
    return st.step() ? uint64_t(st.integer(0)) : 0;
  }
  void set_usage_folded_segment(uint64_t segment) override {
    require_write();
    Stmt st(*conn_, "UPDATE usage_journal SET folded_segment=? WHERE id=1");
    st.bind(int64_t(segment)).step();
  }
  std::vector<UsageRow> usage_sum(const UsageQuery& q) override {
    std::string groups = "b";
    if (q.by_project) groups += ", project_id";
    if (q.by_key) groups += ", api_key_id";
    if (q.by_model) groups += ", model";
    std::string sql =
        "SELECT (ts_s * 1000 - ?) / ? AS b, " + std::string(q.by_project ? "project_id" : "''") + ", " +
        (q.by_key ? "api_key_id" : "''") + ", " + (q.by_model ? "model" : "''") +
        ", SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(requests) FROM usage_seconds "
        "WHERE org_id=? AND ts_s>=? AND ts_s<?";
    if (!q.project_id.empty()) sql += " AND project_id=?";
    if (!q.api_key_id.empty()) sql += " AND api_key_id=?";
    if (!q.model.empty()) sql += " AND model=?";
    if (!q.endpoint.empty()) sql += " AND endpoint=?";
    sql += " GROUP BY " + groups + " ORDER BY " + groups;
    Stmt st(*conn_, sql);
    // The seconds whose start is in [start_ms, end_ms).
    const int64_t first_s = -second_of(-q.start_ms), end_s = -second_of(-q.end_ms);  // (ceilings)
    st.bind(q.start_ms).bind(q.bucket_ms).bind(q.org_id).bind(first_s).bind(end_s);
    if (!q.project_id.empty()) st.bind(q.project_id);
    if (!q.api_key_id.empty()) st.bind(q.api_key_id);
    if (!q.model.empty()) st.bind(q.model);
    if (!q.endpoint.empty()) st.bind(q.endpoint);
    std::vector<UsageRow> out;
    while (st.step()) {
      UsageRow r;
      r.bucket_start_ms = q.start_ms + st.integer(0) * q.bucket_ms;
      r.project_id = st.text(1);
      r.api_key_id = st.text(2);
      r.model = st.text(3);
      r.input_tokens = st.integer(4);
      r.output_tokens = st.integer(5);
      r.cached_tokens = st.integer(6);
      r.requests = st.integer(7);
      out.push_back(std::move(r));
    }
    return out;
  }

  void commit() override;

 private:
  void require_write() {
    if (!write_) throw std::logic_error("write in a read-only transaction");
  }
  void note_written(const Object& o);  // for Store::watch_commits
  SqliteStore& store_;
  std::unique_ptr<Conn> conn_;
  bool write_;
  bool done_ = false;
  bool objects_written_ = false;  // insert, update or remove ran: the commit moves write_generation()
  std::unique_lock<std::mutex> writer_lock_;
  std::vector<WrittenObject> written_;  // watched objects this transaction wrote
};

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(StoreOptions opts) : opts_(std::move(opts)) {
    auto c = make_conn();
    migrate(*c);
    release(std::move(c));
    checkpointer_ = std::thread([this] {
      name_this_thread("sqlite-ckpt");
      checkpoint_loop();
    });
  }
  ~SqliteStore() override {
    {
      std::lock_guard lk(ckpt_mu_);
      stopping_ = true;
    }
    ckpt_cv_.notify_all();
    checkpointer_.join();
    pool_.clear();  // the last connection to close checkpoints what is left
  }

  std::unique_ptr<Tx> begin(bool write) override { return std::make_unique<SqliteTx>(*this, acquire(), write); }
  uint64_t write_generation() const override { return generation_.load(std::memory_order_acquire); }

  std::unique_ptr<Conn> acquire() {
    {
      std::lock_guard lk(pool_mu_);
      if (!pool_.empty()) {
        auto c = std::move(pool_.back());
        pool_.pop_back();
        return c;
      }
    }
    return make_conn();
  }
  void release(std::unique_ptr<Conn> c) {
    std::lock_guard lk(pool_mu_);
    if (pool_.size() < 32) pool_.push_back(std::move(c));
  }
  std::mutex& writer_mu() { return writer_mu_; }
  void bump_generation() { generation_.fetch_add(1, std::memory_order_acq_rel); }

  // WAL frames at which a checkpoint is asked for (SQLite's own default threshold), and the
  // shortest time between two (a long reader can keep a passive one from finishing).
  static constexpr int kCheckpointPages = 1000;
  // When writes outpace the background thread (a passive checkpoint never catches up with a WAL
  // that grows while it runs), the commit that finds this many frames checkpoints inline, as
  // SQLite would by default: its writer lock holds the others off, so it does catch up, and the
  // next writer starts the WAL over. This bounds the WAL at about 16 MB.
  static constexpr int kInlineCheckpointPages = 4000;
  static constexpr std::chrono::milliseconds kCheckpointGap{50};

 private:
  // Every connection reports its commits here instead of checkpointing inline.
  std::unique_ptr<Conn> make_conn() {
    auto c = std::make_unique<Conn>(opts_.path, opts_.sync_full);
    sqlite3_wal_hook(c->db(), &SqliteStore::on_commit, this);  // replaces the inline auto-checkpoint
    return c;
  }
  static int on_commit(void* self, sqlite3* db, const char*, int wal_pages) {
    auto* st = static_cast<SqliteStore*>(self);
    if (wal_pages >= kInlineCheckpointPages) {
      sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
      return SQLITE_OK;
    }
    if (wal_pages >= kCheckpointPages && !st->ckpt_wanted_.load()) {
      {
        std::lock_guard lk(st->ckpt_mu_);
        st->ckpt_wanted_ = true;
      }
      st->ckpt_cv_.notify_one();
    }
    return SQLITE_OK;
  }
  // PASSIVE: copies what no reader still needs, never waits for readers or writers, so commits
  // go on while it runs. The next writer restarts the WAL from its beginning once all of it is
  // in the database file. Also once a second, so that a quiet server's WAL is folded in too.
  void checkpoint_loop() {
    std::unique_ptr<Conn> c;
    std::unique_lock lk(ckpt_mu_);
    while (!stopping_) {
      ckpt_cv_.wait_for(lk, std::chrono::seconds(1), [&] { return stopping_ || ckpt_wanted_.load(); });
      if (stopping_) break;
      lk.unlock();
      try {
        if (!c) c = std::make_unique<Conn>(opts_.path, opts_.sync_full);
        ckpt_wanted_ = false;
        sqlite3_wal_checkpoint_v2(c->db(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
      } catch (const std::exception&) {
        c.reset();  // try again with a new connection on the next round
      }
      lk.lock();
      ckpt_cv_.wait_for(lk, kCheckpointGap, [&] { return stopping_; });
    }
  }

  void migrate(Conn& c) {
    const auto& ms = sqlite_migrations();
    Stmt st(c, "PRAGMA user_version");
    st.step();
    int64_t have = st.integer(0);
    sqlite3_reset(st.s);
    if (have > int64_t(ms.size())) {
      throw std::runtime_error("the data dir's schema is version " + std::to_string(have) +
                               " but this aicloud binary knows only up to version " + std::to_string(ms.size()) +
                               ": it was written by a newer aicloud; run that version or a newer one");
    }
    for (size_t v = size_t(have); v < ms.size(); ++v) {
      c.exec("BEGIN IMMEDIATE");
      try {
        c.exec(ms[v]);
        c.exec("PRAGMA user_version=" + std::to_string(v + 1));
        c.exec("COMMIT");
      } catch (...) {
        c.exec("ROLLBACK");
        throw;
      }
    }
  }

  StoreOptions opts_;
  std::mutex pool_mu_;
  std::vector<std::unique_ptr<Conn>> pool_;
  std::mutex writer_mu_;
  std::atomic<uint64_t> generation_{0};
  std::mutex ckpt_mu_;
  std::condition_variable ckpt_cv_;
  std::atomic<bool> ckpt_wanted_{false};
  bool stopping_ = false;
  std::thread checkpointer_;  // last: started when everything above exists
};

SqliteTx::SqliteTx(SqliteStore& store, std::unique_ptr<Conn> conn, bool write)
    : store_(store), conn_(std::move(conn)), write_(write) {
  if (write_) writer_lock_ = std::unique_lock(store_.writer_mu());
  conn_->exec_cached(write_ ? "BEGIN IMMEDIATE" : "BEGIN");
}

SqliteTx::~SqliteTx() {
  if (!done_) {
    try {
      conn_->exec_cached("ROLLBACK");
    } catch (...) {
      // The connection is in an unknown state: drop it rather than return it to the pool.
      return;
    }
  }
  store_.release(std::move(conn_));
}

void SqliteTx::note_written(const Object& o) {
  if (store_.watched(o.kind)) written_.push_back({o.kind, o.id, o.parent_id});
}

void SqliteTx::commit() {
  conn_->exec_cached("COMMIT");
  done_ = true;
  if (write_) {
    if (objects_written_) store_.bump_generation();
    store_.committed(written_);
  }
}

}  // namespace

std::unique_ptr<Store> open_sqlite_store(const StoreOptions& opts) {
  auto dir = std::filesystem::path(opts.path).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir);
  return std::make_unique<SqliteStore>(opts);
}

}  // namespace aicloud
