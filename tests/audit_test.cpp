// The audit hash chain: appends link to the head, verification finds an edited or deleted
// record (tampered with through raw SQL on the file), and the list filters.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <string>
#include <vector>

#include "audit/audit.h"
#include "store/store.h"
#include "util/json_util.h"
#include "support/server_process.h"

using namespace aicloud;
using aicloud::test::TempDir;

namespace {

std::string db_path(const TempDir& d) { return (std::filesystem::path(d.path()) / "aicloud.db").string(); }

void raw_exec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "") << " in " << sql;
  EXPECT_EQ(sqlite3_changes(db), 1) << sql;
  sqlite3_free(err);
  sqlite3_close(db);
}

AuditRecord rec(int64_t ts_ms, std::string org, std::string actor, std::string action, std::string resource) {
  AuditRecord r;
  r.ts_ms = ts_ms;
  r.org_id = std::move(org);
  r.actor_type = "user";
  r.actor_id = std::move(actor);
  r.action = std::move(action);
  r.resource_id = std::move(resource);
  r.request_id = "req_" + std::to_string(ts_ms);
  r.outcome = "success";
  r.details = {{"ts", ts_ms}, {"name", "n" + std::to_string(ts_ms)}};
  return r;
}

// Five records: seq 1..5, ts 1000..5000.
struct Chain {
  TempDir dir;
  std::unique_ptr<Store> store = open_sqlite_store(StoreOptions{db_path(dir), false});
  std::vector<AuditRecord> records;

  Chain() {
    const char* orgs[] = {"org-a", "org-b", "org-a", "", "org-a"};
    const char* actors[] = {"user-1", "user-2", "user-1", "operator", "key_9"};
    const char* actions[] = {"project.created", "project.created", "api_key.created", "organization.suspended",
                             "project.archived"};
    const char* resources[] = {"proj_1", "proj_2", "key_1", "org-b", "proj_1"};
    for (int i = 0; i < 5; ++i) {
      AuditRecord r = rec(1000 * (i + 1), orgs[i], actors[i], actions[i], resources[i]);
      store->write([&](Tx& tx) { audit_append(tx, r); });
      records.push_back(r);
    }
  }
  AuditVerifyResult verify() { return store->read([](Tx& tx) { return audit_verify(tx); }); }
  std::vector<int64_t> list(AuditQuery q) {
    auto rs = store->read([&](Tx& tx) { return tx.audit_list(q); });
    std::vector<int64_t> seqs;
    for (auto& r : rs) seqs.push_back(r.seq);
    return seqs;
  }
};

}  // namespace

TEST(Audit, AppendLinksTheChain) {
  Chain c;
  ASSERT_EQ(c.records.size(), 5u);
  for (size_t i = 0; i < c.records.size(); ++i) {
    const auto& r = c.records[i];
    EXPECT_EQ(r.seq, int64_t(i + 1));
    EXPECT_EQ(r.hash.size(), 64u);
    EXPECT_EQ(r.prev_hash, i == 0 ? std::string() : c.records[i - 1].hash);
    EXPECT_EQ(r.hash, audit_hash(r, r.prev_hash));
  }
  // What was stored is what was appended.
  auto last = c.store->read([](Tx& tx) { return tx.audit_last(); });
  ASSERT_TRUE(last);
  EXPECT_EQ(last->seq, 5);
  EXPECT_EQ(last->hash, c.records[4].hash);
  EXPECT_EQ(last->details, c.records[4].details);

  // The hash covers every field: changing any one changes it.
  const AuditRecord& base = c.records[2];
  std::vector<AuditRecord> variants(9, base);
  variants[0].ts_ms += 1;
  variants[1].org_id += "x";
  variants[2].actor_type = "admin_key";
  variants[3].actor_id += "x";
  variants[4].action += "x";
  variants[5].resource_id += "x";
  variants[6].request_id += "x";
  variants[7].outcome = "error:500";
  variants[8].details["name"] = "other";
  for (const auto& v : variants) EXPECT_NE(audit_hash(v, base.prev_hash), base.hash);
  EXPECT_NE(audit_hash(base, c.records[0].hash), base.hash);

  auto res = c.verify();
  EXPECT_TRUE(res.ok) << res.reason;
  EXPECT_EQ(res.records, 5);
  EXPECT_EQ(res.first_broken_seq, 0);
}

TEST(Audit, EmptyChainVerifies) {
  TempDir d;
  auto s = open_sqlite_store(StoreOptions{db_path(d), false});
  auto res = s->read([](Tx& tx) { return audit_verify(tx); });
  EXPECT_TRUE(res.ok);
  EXPECT_EQ(res.records, 0);
}

TEST(Audit, EditingAnyFieldBreaksTheChainAtThatRecord) {
  // Each edit on a fresh chain: the verifier must name record 3.
  const std::vector<std::string> edits = {
      "ts_ms=ts_ms+1",
      "org_id='org-z'",
      "actor_type='operator'",
      "actor_id='user-evil'",
      "action='project.deleted'",
      "resource_id='proj_x'",
      "request_id='req_x'",
      "outcome='error:403'",
      "details='{\"name\":\"forged\",\"ts\":3000}'",
      "prev_hash='" + std::string(64, '0') + "'",
      "hash='" + std::string(64, 'f') + "'",
  };
  for (const auto& e : edits) {
    SCOPED_TRACE(e);
    Chain c;
    raw_exec(db_path(c.dir), "UPDATE audit_log SET " + e + " WHERE seq=3");
    auto res = c.verify();
    EXPECT_FALSE(res.ok);
    EXPECT_EQ(res.first_broken_seq, 3);
    EXPECT_FALSE(res.reason.empty());
  }
}

TEST(Audit, RecomputingTheEditedHashStillBreaksTheNextRecord) {
  Chain c;
  AuditRecord forged = c.records[2];
  forged.actor_id = "user-evil";
  forged.hash = audit_hash(forged, forged.prev_hash);
  raw_exec(db_path(c.dir), "UPDATE audit_log SET actor_id='user-evil', hash='" + forged.hash + "' WHERE seq=3");
  auto res = c.verify();
  EXPECT_FALSE(res.ok);
  EXPECT_EQ(res.first_broken_seq, 4);
}

TEST(Audit, DeletingARecordBreaksTheChain) {
  {
    Chain c;
    raw_exec(db_path(c.dir), "DELETE FROM audit_log WHERE seq=3");
    auto res = c.verify();
    EXPECT_FALSE(res.ok);
    EXPECT_EQ(res.first_broken_seq, 4);  // the first record after the gap
    EXPECT_NE(res.reason.find("record 3"), std::string::npos) << res.reason;
  }
  {
    Chain c;
    raw_exec(db_path(c.dir), "DELETE FROM audit_log WHERE seq=1");
    auto res = c.verify();
    EXPECT_FALSE(res.ok);
    EXPECT_NE(res.reason.find("record 1"), std::string::npos) << res.reason;
  }
  {
    // Deleting a record and renumbering the rest to hide the gap is still found: the next
    // record's prev_hash no longer matches.
    Chain c;
    raw_exec(db_path(c.dir), "DELETE FROM audit_log WHERE seq=5");
    raw_exec(db_path(c.dir), "UPDATE audit_log SET seq=5 WHERE seq=4");
    raw_exec(db_path(c.dir), "UPDATE audit_log SET seq=4 WHERE seq=3");
    // (records now: 1, 2, 4(old 3), 5(old 4) -> gap at 3)
    auto res = c.verify();
    EXPECT_FALSE(res.ok);
  }
  {
    Chain c;
    raw_exec(db_path(c.dir), "DELETE FROM audit_log WHERE seq=2");
    raw_exec(db_path(c.dir), "UPDATE audit_log SET seq=2 WHERE seq=3");
    // 1, 2(old 3): seqs contiguous up to here, but old 3's prev_hash points at the deleted one.
    auto res = c.verify();
    EXPECT_FALSE(res.ok);
    EXPECT_EQ(res.first_broken_seq, 2);
  }
}

TEST(Audit, AppendAfterTheChainContinuesIt) {
  Chain c;
  AuditRecord r = rec(6000, "org-a", "user-1", "project.created", "proj_3");
  c.store->write([&](Tx& tx) { audit_append(tx, r); });
  EXPECT_EQ(r.seq, 6);
  EXPECT_EQ(r.prev_hash, c.records[4].hash);
  EXPECT_TRUE(c.verify().ok);
  // An append that is rolled back leaves no trace and no gap.
  {
    auto tx = c.store->begin(true);
    AuditRecord x = rec(7000, "org-a", "user-1", "x", "y");
    audit_append(*tx, x);
  }
  AuditRecord r2 = rec(8000, "org-a", "user-1", "project.created", "proj_4");
  c.store->write([&](Tx& tx) { audit_append(tx, r2); });
  EXPECT_EQ(r2.seq, 7);
  auto res = c.verify();
  EXPECT_TRUE(res.ok) << res.reason;
  EXPECT_EQ(res.records, 7);
}

TEST(Audit, InvalidUtf8InAPathParameterStillChains) {
  // A failed request's audit record names the path parameter it was given (which may be any
  // bytes, e.g. %FF): appending, verifying and showing it must all work.
  Chain c;
  AuditRecord r = rec(6000, "org-a", "user-1", "project.deleted", std::string("proj_\xff\xfe"));
  r.outcome = "error:404";
  c.store->write([&](Tx& tx) { audit_append(tx, r); });
  auto res = c.verify();
  EXPECT_TRUE(res.ok) << res.reason;
  auto last = c.store->read([](Tx& tx) { return tx.audit_last(); });
  EXPECT_EQ(last->resource_id, std::string("proj_\xff\xfe"));
  EXPECT_NO_THROW(json::parse(dump_json(audit_to_json(*last))));
}

TEST(Audit, ListFilters) {
  Chain c;
  AuditQuery all;
  all.limit = 100;
  EXPECT_EQ(c.list(all), (std::vector<int64_t>{5, 4, 3, 2, 1}));  // newest first

  AuditQuery q = all;
  q.org_id = "org-a";
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{5, 3, 1}));
  q = all;
  q.actor_id = "user-1";
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{3, 1}));
  q = all;
  q.action = "project.created";
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{2, 1}));
  q = all;
  q.resource_id = "proj_1";
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{5, 1}));
  q.org_id = "org-a";
  q.action = "project.archived";
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{5}));
  q.org_id = "org-b";
  EXPECT_TRUE(c.list(q).empty());

  // Time range, inclusive on both ends.
  q = all;
  q.since_ms = 2000;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{5, 4, 3, 2}));
  q.until_ms = 4000;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{4, 3, 2}));
  q.since_ms = 0;
  q.until_ms = 1000;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{1}));
  q.since_ms = 4001;
  q.until_ms = 4999;
  EXPECT_TRUE(c.list(q).empty());

  // Paging: before_seq, newest first.
  q = all;
  q.limit = 2;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{5, 4}));
  q.before_seq = 4;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{3, 2}));
  q.before_seq = 2;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{1}));
  q.before_seq = 1;
  EXPECT_TRUE(c.list(q).empty());
  // Paging within a filter.
  q = all;
  q.org_id = "org-a";
  q.limit = 1;
  q.before_seq = 5;
  EXPECT_EQ(c.list(q), (std::vector<int64_t>{3}));

  // The records come back whole.
  q = all;
  q.limit = 1;
  q.before_seq = 4;
  auto rs = c.store->read([&](Tx& tx) { return tx.audit_list(q); });
  ASSERT_EQ(rs.size(), 1u);
  const AuditRecord& got = rs[0];
  const AuditRecord& want = c.records[2];
  EXPECT_EQ(got.ts_ms, want.ts_ms);
  EXPECT_EQ(got.org_id, want.org_id);
  EXPECT_EQ(got.actor_type, want.actor_type);
  EXPECT_EQ(got.actor_id, want.actor_id);
  EXPECT_EQ(got.action, want.action);
  EXPECT_EQ(got.resource_id, want.resource_id);
  EXPECT_EQ(got.request_id, want.request_id);
  EXPECT_EQ(got.outcome, want.outcome);
  EXPECT_EQ(got.details, want.details);
  EXPECT_EQ(got.prev_hash, want.prev_hash);
  EXPECT_EQ(got.hash, want.hash);
}

TEST(Audit, JsonShape) {
  Chain c;
  auto j = audit_to_json(c.records[3]);  // operator-level: no org
  EXPECT_EQ(j["object"], "organization.audit_log");
  EXPECT_EQ(j["id"], "audit_4");
  EXPECT_EQ(j["type"], "organization.suspended");
  EXPECT_EQ(j["effective_at"], 4);
  EXPECT_EQ(j["effective_at_ms"], 4000);
  EXPECT_TRUE(j["organization_id"].is_null());
  EXPECT_EQ(j["actor"]["type"], "user");
  EXPECT_EQ(j["actor"]["id"], "operator");
  EXPECT_EQ(j["resource_id"], "org-b");
  EXPECT_EQ(j["hash"], c.records[3].hash);
  EXPECT_EQ(audit_to_json(c.records[0])["organization_id"], "org-a");
}
