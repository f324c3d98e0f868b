// The SQLite store as a library: CRUD with optimistic concurrency, unique lookups, paging,
// rollback, concurrent writers, schema migrations and idempotency records. No server process.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "store/migrations.h"
#include "store/store.h"
#include "support/server_process.h"

using namespace aicloud;
using aicloud::test::TempDir;

namespace {

std::string db_path(const TempDir& d) { return (std::filesystem::path(d.path()) / "aicloud.db").string(); }

std::unique_ptr<Store> open_store(const TempDir& d, bool sync_full = false) {
  return open_sqlite_store(StoreOptions{db_path(d), sync_full});
}

Object widget(std::string id, std::string org = "", std::string project = "", std::string parent = "",
              std::string lookup = "") {
  Object o;
  o.kind = "widget";
  o.id = std::move(id);
  o.org_id = std::move(org);
  o.project_id = std::move(project);
  o.parent_id = std::move(parent);
  o.lookup = std::move(lookup);
  o.data = {{"n", 1}};
  return o;
}

// Runs one SQL statement on the file through a separate raw connection; returns the first
// column of the first row as an integer (0 when there is none).
int64_t raw_sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  int64_t v = 0;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
  EXPECT_TRUE(rc == SQLITE_ROW || rc == SQLITE_DONE) << sqlite3_errmsg(db);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

std::vector<std::string> ids_of(const Page& p) {
  std::vector<std::string> out;
  for (const auto& o : p.items) out.push_back(o.id);
  return out;
}

}  // namespace

TEST(Store, InsertGetFindUpdateRemove) {
  TempDir d;
  auto s = open_store(d);
  uint64_t gen0 = s->write_generation();

  Object o = widget("w_1", "org-a", "proj_a", "parent_1", "unique-1");
  s->write([&](Tx& tx) { tx.insert(o); });
  EXPECT_EQ(o.version, 1);
  EXPECT_GT(o.seq, 0);
  EXPECT_GT(o.created_at, 0);
  EXPECT_GT(s->write_generation(), gen0);

  auto got = s->read([](Tx& tx) { return tx.get("widget", "w_1"); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->org_id, "org-a");
  EXPECT_EQ(got->project_id, "proj_a");
  EXPECT_EQ(got->parent_id, "parent_1");
  EXPECT_EQ(got->lookup, "unique-1");
  EXPECT_EQ(got->version, 1);
  EXPECT_EQ(got->seq, o.seq);
  EXPECT_EQ(got->created_at, o.created_at);
  EXPECT_EQ(got->data, o.data);

  // get is by (kind, id): the same id under another kind is not found.
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.get("gadget", "w_1"); }));
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.get("widget", "w_nope"); }));

  auto found = s->read([](Tx& tx) { return tx.find("widget", "unique-1"); });
  ASSERT_TRUE(found);
  EXPECT_EQ(found->id, "w_1");
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.find("gadget", "unique-1"); }));
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.find("widget", "unique-2"); }));
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.find("widget", ""); }));  // "" is no lookup

  // Update with the current version bumps it.
  Object a = *got;
  a.data["n"] = 2;
  s->write([&](Tx& tx) { tx.update(a); });
  EXPECT_EQ(a.version, 2);
  auto after = s->read([](Tx& tx) { return tx.get("widget", "w_1"); });
  EXPECT_EQ(after->version, 2);
  EXPECT_EQ(after->data["n"], 2);

  // A stale copy (version 1) is refused, and nothing changes.
  Object stale = *got;
  stale.data["n"] = 99;
  EXPECT_THROW(s->write([&](Tx& tx) { tx.update(stale); }), StoreConflict);
  EXPECT_EQ(stale.version, 1);
  EXPECT_EQ(s->read([](Tx& tx) { return tx.get("widget", "w_1"); })->data["n"], 2);

  // Updating an object that does not exist is a conflict too.
  Object ghost = widget("w_ghost");
  ghost.version = 1;
  EXPECT_THROW(s->write([&](Tx& tx) { tx.update(ghost); }), StoreConflict);

  // Update may clear the lookup, which frees it.
  a.lookup = "";
  s->write([&](Tx& tx) { tx.update(a); });
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.find("widget", "unique-1"); }));

  EXPECT_FALSE(s->write([](Tx& tx) { return tx.remove("gadget", "w_1"); }));
  EXPECT_TRUE(s->write([](Tx& tx) { return tx.remove("widget", "w_1"); }));
  EXPECT_FALSE(s->write([](Tx& tx) { return tx.remove("widget", "w_1"); }));
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.get("widget", "w_1"); }));
}

TEST(Store, ExplicitCreatedAtIsKept) {
  TempDir d;
  auto s = open_store(d);
  Object o = widget("w_1");
  o.created_at = 1234;
  s->write([&](Tx& tx) { tx.insert(o); });
  EXPECT_EQ(s->read([](Tx& tx) { return tx.get("widget", "w_1"); })->created_at, 1234);
}

TEST(Store, DuplicateIdOrLookupIsConflict) {
  TempDir d;
  auto s = open_store(d);
  Object a = widget("w_1", "", "", "", "key-a");
  s->write([&](Tx& tx) { tx.insert(a); });

  Object same_id = widget("w_1", "", "", "", "key-other");
  EXPECT_THROW(s->write([&](Tx& tx) { tx.insert(same_id); }), StoreConflict);
  // ids are globally unique, across kinds.
  Object same_id_other_kind = widget("w_1");
  same_id_other_kind.kind = "gadget";
  EXPECT_THROW(s->write([&](Tx& tx) { tx.insert(same_id_other_kind); }), StoreConflict);

  Object same_lookup = widget("w_2", "", "", "", "key-a");
  EXPECT_THROW(s->write([&](Tx& tx) { tx.insert(same_lookup); }), StoreConflict);

  // The lookup is unique within a kind only; an empty lookup is "none", never a conflict.
  Object other_kind = widget("g_1", "", "", "", "key-a");
  other_kind.kind = "gadget";
  s->write([&](Tx& tx) { tx.insert(other_kind); });
  Object n1 = widget("w_3"), n2 = widget("w_4");
  s->write([&](Tx& tx) {
    tx.insert(n1);
    tx.insert(n2);
  });

  // Taking another object's lookup by update is a conflict as well.
  Object b = widget("w_5", "", "", "", "key-b");
  s->write([&](Tx& tx) { tx.insert(b); });
  b.lookup = "key-a";
  EXPECT_THROW(s->write([&](Tx& tx) { tx.update(b); }), StoreConflict);
  EXPECT_EQ(s->read([](Tx& tx) { return tx.find("widget", "key-b"); })->id, "w_5");

  // A conflict inside a transaction leaves the transaction usable up to the caller: the
  // caller that catches it may still commit its other work.
  Object ok = widget("w_6"), dup = widget("w_1");
  s->write([&](Tx& tx) {
    tx.insert(ok);
    EXPECT_THROW(tx.insert(dup), StoreConflict);
  });
  EXPECT_TRUE(s->read([](Tx& tx) { return tx.get("widget", "w_6"); }));
}

TEST(Store, WriteInReadTransactionIsRefused) {
  TempDir d;
  auto s = open_store(d);
  Object o = widget("w_1");
  EXPECT_THROW(s->read([&](Tx& tx) { tx.insert(o); }), std::logic_error);
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.get("widget", "w_1"); }));
}

TEST(Store, ListPagingBothOrdersAndFilters) {
  TempDir d;
  auto s = open_store(d);
  // 7 widgets: org a has 5 (projects p1/p2, parents x/y), org b has 2; plus a gadget in org a.
  std::vector<std::string> all_ids;
  s->write([&](Tx& tx) {
    for (int i = 0; i < 7; ++i) {
      std::string org = i < 5 ? "org-a" : "org-b";
      std::string proj = i % 2 ? "p2" : "p1";
      std::string parent = i < 3 ? "x" : "y";
      Object o = widget("w_" + std::to_string(i), org, proj, parent);
      tx.insert(o);
      all_ids.push_back(o.id);
      if (i == 2) {
        Object g = widget("g_0", "org-a", "p1", "x");
        g.kind = "gadget";
        tx.insert(g);
      }
    }
  });

  auto page_through = [&](ListQuery q) {
    std::vector<std::string> seen;
    std::vector<size_t> sizes;
    for (int guard = 0; guard < 20; ++guard) {
      Page p = s->read([&](Tx& tx) { return tx.list(q); });
      for (auto& o : p.items) seen.push_back(o.id);
      sizes.push_back(p.items.size());
      EXPECT_LE(p.items.size(), size_t(q.limit));
      if (!p.has_more) break;
      EXPECT_FALSE(p.items.empty());
      q.after = p.items.back().id;
    }
    return std::make_pair(seen, sizes);
  };

  ListQuery q;
  q.kind = "widget";
  q.limit = 3;
  auto [asc, asc_sizes] = page_through(q);
  EXPECT_EQ(asc, all_ids);
  EXPECT_EQ(asc_sizes, (std::vector<size_t>{3, 3, 1}));

  q.newest_first = true;
  auto [desc, desc_sizes] = page_through(q);
  std::vector<std::string> rev(all_ids.rbegin(), all_ids.rend());
  EXPECT_EQ(desc, rev);

  // An exact multiple of the limit: the last full page says has_more=false.
  q.newest_first = false;
  q.limit = 7;
  Page whole = s->read([&](Tx& tx) { return tx.list(q); });
  EXPECT_EQ(whole.items.size(), 7u);
  EXPECT_FALSE(whole.has_more);
  q.limit = 6;
  Page almost = s->read([&](Tx& tx) { return tx.list(q); });
  EXPECT_EQ(almost.items.size(), 6u);
  EXPECT_TRUE(almost.has_more);

  // Filters.
  ListQuery f;
  f.kind = "widget";
  f.limit = 100;
  f.org_id = "org-a";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(f); })),
            (std::vector<std::string>{"w_0", "w_1", "w_2", "w_3", "w_4"}));
  f.project_id = "p2";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(f); })), (std::vector<std::string>{"w_1", "w_3"}));
  f.parent_id = "y";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(f); })), (std::vector<std::string>{"w_3"}));
  f = ListQuery{};
  f.kind = "widget";
  f.limit = 100;
  f.parent_id = "x";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(f); })), (std::vector<std::string>{"w_0", "w_1", "w_2"}));
  f.parent_id.clear();
  f.org_id = "org-b";
  f.newest_first = true;
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(f); })), (std::vector<std::string>{"w_6", "w_5"}));

  // Filtered paging: org a, 2 per page, newest first.
  ListQuery fp;
  fp.kind = "widget";
  fp.org_id = "org-a";
  fp.limit = 2;
  fp.newest_first = true;
  auto [fdesc, fsizes] = page_through(fp);
  EXPECT_EQ(fdesc, (std::vector<std::string>{"w_4", "w_3", "w_2", "w_1", "w_0"}));
  EXPECT_EQ(fsizes, (std::vector<size_t>{2, 2, 1}));

  // all(): every match in insertion order, no paging.
  ListQuery aq;
  aq.kind = "widget";
  aq.org_id = "org-a";
  aq.limit = 1;  // ignored
  auto all = s->read([&](Tx& tx) { return tx.all(aq); });
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all.front().id, "w_0");
  EXPECT_EQ(all.back().id, "w_4");

  // A cursor that is not in the list pages nothing (never another list's position): an
  // unknown id, an object of another kind, or one outside the filter.
  for (auto [after, org] : {std::pair{"w_nope", ""}, std::pair{"g_0", ""}, std::pair{"w_5", "org-a"}}) {
    SCOPED_TRACE(after);
    ListQuery cq;
    cq.kind = "widget";
    cq.org_id = org;
    cq.after = after;
    for (bool newest : {false, true}) {
      cq.newest_first = newest;
      Page p = s->read([&](Tx& tx) { return tx.list(cq); });
      EXPECT_TRUE(p.items.empty());
      EXPECT_FALSE(p.has_more);
    }
  }
  // A cursor inside the filter works as usual.
  ListQuery in;
  in.kind = "widget";
  in.org_id = "org-a";
  in.after = "w_2";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(in); })), (std::vector<std::string>{"w_3", "w_4"}));
  in.newest_first = true;
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(in); })), (std::vector<std::string>{"w_1", "w_0"}));

  // Another kind is never listed.
  ListQuery gq;
  gq.kind = "gadget";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(gq); })), (std::vector<std::string>{"g_0"}));
}

TEST(Store, TxDestroyedWithoutCommitRollsBack) {
  TempDir d;
  auto s = open_store(d);
  Object keep = widget("w_keep");
  s->write([&](Tx& tx) { tx.insert(keep); });
  uint64_t gen = s->write_generation();
  {
    auto tx = s->begin(true);
    Object o = widget("w_lost");
    tx->insert(o);
    Object k = *tx->get("widget", "w_keep");
    k.data["n"] = 42;
    tx->update(k);
    AuditRecord r;
    r.action = "x";
    tx->audit_append(r);
    tx->idempotency_put("scope", "key", IdempotencyRecord{"h", 200, "{}", 1});
    // Visible inside the transaction...
    EXPECT_TRUE(tx->get("widget", "w_lost"));
  }
  // ...and gone after it is dropped.
  EXPECT_EQ(s->write_generation(), gen);
  s->read([](Tx& tx) {
    EXPECT_FALSE(tx.get("widget", "w_lost"));
    auto k = tx.get("widget", "w_keep");
    ASSERT_TRUE(k);
    EXPECT_EQ(k->data["n"], 1);
    EXPECT_EQ(k->version, 1);
    EXPECT_FALSE(tx.audit_last());
    EXPECT_FALSE(tx.idempotency_get("scope", "key"));
  });

  // An exception from inside write() rolls back too, and the writer lock is released.
  EXPECT_THROW(s->write([&](Tx& tx) {
    Object o = widget("w_thrown");
    tx.insert(o);
    throw std::runtime_error("boom");
  }),
               std::runtime_error);
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.get("widget", "w_thrown"); }));
  Object next = widget("w_next");
  s->write([&](Tx& tx) { tx.insert(next); });  // would deadlock if the lock leaked
  EXPECT_TRUE(s->read([](Tx& tx) { return tx.get("widget", "w_next"); }));
}

TEST(Store, ReadTransactionSeesASnapshot) {
  TempDir d;
  auto s = open_store(d);
  Object a = widget("w_a");
  s->write([&](Tx& tx) { tx.insert(a); });
  auto rtx = s->begin(false);
  EXPECT_TRUE(rtx->get("widget", "w_a"));  // the snapshot starts here
  Object b = widget("w_b");
  s->write([&](Tx& tx) { tx.insert(b); });  // a writer is not blocked by an open reader
  EXPECT_FALSE(rtx->get("widget", "w_b"));
  rtx.reset();
  EXPECT_TRUE(s->read([](Tx& tx) { return tx.get("widget", "w_b"); }));
}

TEST(Store, ConcurrentWritersAllLand) {
  TempDir d;
  // Two store instances on one file (as two processes would be) and several threads on each:
  // writers within a store queue on its mutex, across stores on SQLite's busy timeout.
  auto s1 = open_store(d);
  auto s2 = open_store(d);
  Object counter = widget("counter");
  counter.data = {{"n", 0}};
  s1->write([&](Tx& tx) { tx.insert(counter); });

  constexpr int kThreads = 8, kPerThread = 25;
  std::atomic<int> errors{0}, reads{0};
  std::atomic<bool> stop_readers{false};
  std::vector<std::string> messages(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Store& s = t % 2 ? *s2 : *s1;
      try {
        for (int i = 0; i < kPerThread; ++i) {
          s.write([&](Tx& tx) {
            Object o = widget("w_" + std::to_string(t) + "_" + std::to_string(i), "org-" + std::to_string(t));
            tx.insert(o);
            auto c = tx.get("widget", "counter");
            c->data["n"] = c->data["n"].get<int>() + 1;
            tx.update(*c);
          });
        }
      } catch (const std::exception& e) {
        ++errors;
        messages[size_t(t)] = e.what();
      }
    });
  }
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      Store& s = r ? *s2 : *s1;
      try {
        while (!stop_readers) {
          ListQuery q;
          q.kind = "widget";
          q.limit = 50;
          q.newest_first = true;
          s.read([&](Tx& tx) { return tx.list(q); });
          ++reads;
        }
      } catch (const std::exception& e) {
        ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  stop_readers = true;
  for (auto& t : readers) t.join();

  EXPECT_EQ(errors.load(), 0) << messages[0] << messages[1];
  EXPECT_GT(reads.load(), 0);
  ListQuery q;
  q.kind = "widget";
  auto all = s1->read([&](Tx& tx) { return tx.all(q); });
  EXPECT_EQ(all.size(), size_t(kThreads * kPerThread + 1));
  auto c = s2->read([](Tx& tx) { return tx.get("widget", "counter"); });
  EXPECT_EQ(c->data["n"], kThreads * kPerThread);
  EXPECT_EQ(c->version, kThreads * kPerThread + 1);
}

TEST(Store, FreshDatabaseIsAtTheLatestSchemaVersion) {
  TempDir d;
  { auto s = open_store(d); }
  ASSERT_FALSE(sqlite_migrations().empty());
  EXPECT_EQ(raw_sql(db_path(d), "PRAGMA user_version"), int64_t(sqlite_migrations().size()));
  // WAL mode persists in the file.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path(d).c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);
  // Opening again migrates nothing and keeps the version.
  { auto s = open_store(d); }
  EXPECT_EQ(raw_sql(db_path(d), "PRAGMA user_version"), int64_t(sqlite_migrations().size()));
}

TEST(Store, DatabaseFromANewerBinaryIsRefused) {
  TempDir d;
  int64_t newer = int64_t(sqlite_migrations().size()) + 1;
  raw_sql(db_path(d), "PRAGMA user_version=" + std::to_string(newer));
  try {
    open_store(d);
    FAIL() << "a database at schema version " << newer << " was opened";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("written by a newer aicloud"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(newer)), std::string::npos) << msg;
  }
  // The file is left as it was: no tables created, the version untouched.
  EXPECT_EQ(raw_sql(db_path(d), "PRAGMA user_version"), newer);
  EXPECT_EQ(raw_sql(db_path(d), "SELECT count(*) FROM sqlite_master WHERE name='objects'"), 0);
}

// The fold appends usage records many to a statement: every row keeps its own values, through
// full statements and the rest; usage records do not move the objects' write generation.
TEST(Store, UsageRecordsAreKeptWithEveryField) {
  TempDir d;
  auto s = open_store(d);
  auto batch = [](int from, int n) {
    std::vector<UsageRecord> v;
    for (int i = from; i < from + n; ++i) {
      UsageRecord r;
      r.ts_ms = 1000 + i;
      r.org_id = "org_" + std::to_string(i % 2);
      r.project_id = "proj_" + std::to_string(i % 3);
      r.api_key_id = "key_" + std::to_string(i);
      r.model = "m", r.deployment_id = "dep", r.region = "local", r.endpoint = "completions";
      r.input_tokens = i, r.output_tokens = 2 * i, r.cached_tokens = i % 5, r.latency_ms = 7, r.status = 200;
      r.request_id = "req_" + std::to_string(i);
      v.push_back(std::move(r));
    }
    return v;
  };
  uint64_t gen = s->write_generation();
  s->write([&](Tx& tx) { tx.usage_append(batch(0, 75)); });
  s->write([&](Tx& tx) { tx.usage_append(batch(75, 5)); });
  s->write([&](Tx& tx) { tx.usage_append({}); });
  // Object caches (the rate limiter's table) are not told to reload by the meter's folds.
  EXPECT_EQ(s->write_generation(), gen);
  // Kept as per-second sums: the 80 records (ts 1000..1079 ms, all in second 1) have 80 keys, so
  // 80 rows; what a second row of the same group adds goes into its sums (below).
  std::string path = db_path(d);
  EXPECT_EQ(raw_sql(path, "SELECT COUNT(*) FROM usage_seconds"), 80);
  EXPECT_EQ(raw_sql(path, "SELECT COUNT(*) FROM usage_seconds WHERE api_key_id = 'key_' || input_tokens AND "
                          "project_id = 'proj_' || (input_tokens % 3) AND org_id = 'org_' || (input_tokens % 2) AND "
                          "ts_s = 1 AND requests = 1 AND output_tokens = 2 * input_tokens AND "
                          "cached_tokens = input_tokens % 5 AND latency_ms = 7 AND status = 200"),
            80);
  EXPECT_EQ(raw_sql(path, "SELECT SUM(input_tokens) FROM usage_seconds"), 79 * 80 / 2);
}

// Records of one group are summed, within one append and across appends (a second's records
// are folded in several journal segments); a new second, status or key is a row of its own.
TEST(Store, UsageOfOneSecondAndGroupIsSummedAcrossAppends) {
  TempDir d;
  auto s = open_store(d);
  auto rec = [](int64_t ts_ms, std::string key, int status, int64_t in) {
    UsageRecord r;
    r.ts_ms = ts_ms, r.org_id = "org_a", r.project_id = "proj_a", r.api_key_id = std::move(key), r.model = "m";
    r.deployment_id = "dep", r.region = "local", r.endpoint = "completions", r.status = status;
    r.input_tokens = in, r.output_tokens = 2 * in, r.cached_tokens = 1, r.latency_ms = 10;
    return r;
  };
  s->write([&](Tx& tx) {
    tx.usage_append({rec(5'000, "k1", 200, 1), rec(5'999, "k1", 200, 2), rec(5'500, "k2", 200, 4),
                     rec(5'100, "k1", 200, 8), rec(6'000, "k1", 200, 16), rec(5'200, "k1", 429, 32)});
  });
  s->write([&](Tx& tx) { tx.usage_append({rec(5'300, "k1", 200, 64), rec(6'999, "k1", 200, 128)}); });
  std::string path = db_path(d);
  EXPECT_EQ(raw_sql(path, "SELECT COUNT(*) FROM usage_seconds"), 4);
  EXPECT_EQ(raw_sql(path, "SELECT requests FROM usage_seconds WHERE ts_s = 5 AND api_key_id = 'k1' AND status = 200"), 4);
  EXPECT_EQ(raw_sql(path, "SELECT input_tokens FROM usage_seconds WHERE ts_s = 5 AND api_key_id = 'k1' AND status = 200"),
            1 + 2 + 8 + 64);
  EXPECT_EQ(raw_sql(path, "SELECT output_tokens + cached_tokens + latency_ms FROM usage_seconds WHERE ts_s = 5 AND "
                          "api_key_id = 'k1' AND status = 200"),
            2 * 75 + 4 + 40);
  EXPECT_EQ(raw_sql(path, "SELECT input_tokens FROM usage_seconds WHERE ts_s = 6"), 16 + 128);
  // The usage API's sums: second 5 alone, then seconds 5 and 6 in one bucket, by key.
  UsageQuery q;
  q.org_id = "org_a", q.start_ms = 5'000, q.end_ms = 6'000, q.bucket_ms = 60'000;
  auto rows = s->read([&](Tx& tx) { return tx.usage_sum(q); });
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].requests, 6);
  EXPECT_EQ(rows[0].input_tokens, 1 + 2 + 4 + 8 + 32 + 64);
  q.end_ms = 7'000, q.by_key = true;
  rows = s->read([&](Tx& tx) { return tx.usage_sum(q); });
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].api_key_id, "k1");
  EXPECT_EQ(rows[0].requests, 7);
  EXPECT_EQ(rows[0].input_tokens, 1 + 2 + 8 + 16 + 32 + 64 + 128);
  EXPECT_EQ(rows[0].bucket_start_ms, 5'000);
  EXPECT_EQ(rows[1].api_key_id, "k2");
  EXPECT_EQ(rows[1].requests, 1);
}

// A database from before usage was kept per second (schema 3): its per-request rows become
// per-second sums when it is opened, and the usage API reads the same totals as before.
TEST(Store, PerRequestUsageRowsOfAnOlderDatabaseBecomeSums) {
  TempDir d;
  std::filesystem::create_directories(std::filesystem::path(db_path(d)).parent_path());
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(db_path(d).c_str(), &db), SQLITE_OK);
    for (size_t v = 0; v < 3; ++v) ASSERT_EQ(sqlite3_exec(db, sqlite_migrations()[v].c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    std::string sql = "PRAGMA user_version=3;";
    for (int i = 0; i < 10; ++i) {  // ts 0..9 s apart by 250 ms: seconds 0, 1 and 2 hold 4, 4 and 2
      sql += "INSERT INTO usage_records(ts_ms, org_id, project_id, api_key_id, model, deployment_id, region, endpoint, "
             "input_tokens, output_tokens, cached_tokens, latency_ms, status, request_id) VALUES(" +
             std::to_string(i * 250) + ", 'org_a', 'p', 'k', 'm', 'd', 'r', 'completions', " + std::to_string(i) +
             ", 1, 0, 5, 200, 'req_" + std::to_string(i) + "');";
    }
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  auto s = open_store(d);
  UsageQuery q;
  q.org_id = "org_a", q.start_ms = 0, q.end_ms = 3'000, q.bucket_ms = 1'000;
  auto rows = s->read([&](Tx& tx) { return tx.usage_sum(q); });
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].requests, 4);
  EXPECT_EQ(rows[0].input_tokens, 0 + 1 + 2 + 3);
  EXPECT_EQ(rows[1].input_tokens, 4 + 5 + 6 + 7);
  EXPECT_EQ(rows[2].requests, 2);
  EXPECT_EQ(rows[2].bucket_start_ms, 2'000);
  EXPECT_EQ(raw_sql(db_path(d), "SELECT COUNT(*) FROM sqlite_master WHERE name = 'usage_records'"), 0);
}

TEST(Store, ReopenKeepsData) {
  TempDir d;
  {
    auto s = open_store(d, /*sync_full=*/true);
    Object o = widget("w_1", "org-a", "", "", "look");
    o.data = {{"name", "kept"}, {"nested", {{"a", {1, 2, 3}}}}, {"unicode", "h\u00e9llo \u2603"}};
    s->write([&](Tx& tx) {
      tx.insert(o);
      AuditRecord r;
      r.action = "widget.created";
      r.details = {{"k", "v"}};
      tx.audit_append(r);
      tx.idempotency_put("org-a", "idem-1", IdempotencyRecord{"hash", 201, "{\"id\":\"w_1\"}", 77});
    });
  }
  auto s = open_store(d);
  s->read([](Tx& tx) {
    auto o = tx.find("widget", "look");
    ASSERT_TRUE(o);
    EXPECT_EQ(o->id, "w_1");
    EXPECT_EQ(o->data["name"], "kept");
    EXPECT_EQ(o->data["nested"]["a"][2], 3);
    EXPECT_EQ(o->data["unicode"], "h\u00e9llo \u2603");
    auto r = tx.audit_last();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->action, "widget.created");
    EXPECT_EQ(r->details["k"], "v");
    auto idem = tx.idempotency_get("org-a", "idem-1");
    ASSERT_TRUE(idem);
    EXPECT_EQ(idem->status, 201);
  });
  // New inserts continue after the old ones.
  Object n = widget("w_2");
  s->write([&](Tx& tx) { tx.insert(n); });
  ListQuery q;
  q.kind = "widget";
  EXPECT_EQ(ids_of(s->read([&](Tx& tx) { return tx.list(q); })), (std::vector<std::string>{"w_1", "w_2"}));
}

TEST(Store, IdempotencyRecords) {
  TempDir d;
  auto s = open_store(d);
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.idempotency_get("org-a", "k1"); }));
  s->write([](Tx& tx) { tx.idempotency_put("org-a", "k1", IdempotencyRecord{"h1", 200, "{\"a\":1}", 100}); });
  auto r = s->read([](Tx& tx) { return tx.idempotency_get("org-a", "k1"); });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->request_hash, "h1");
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "{\"a\":1}");
  EXPECT_EQ(r->created_at, 100);
  // Keys are scoped: the same key in another scope is another record.
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.idempotency_get("org-b", "k1"); }));
  s->write([](Tx& tx) { tx.idempotency_put("org-b", "k1", IdempotencyRecord{"h2", 201, "", 101}); });
  EXPECT_EQ(s->read([](Tx& tx) { return tx.idempotency_get("org-b", "k1"); })->status, 201);
  EXPECT_EQ(s->read([](Tx& tx) { return tx.idempotency_get("org-a", "k1"); })->status, 200);
  // A second put of the same (scope, key) is a conflict; the first record stays.
  EXPECT_THROW(s->write([](Tx& tx) { tx.idempotency_put("org-a", "k1", IdempotencyRecord{"h3", 500, "", 102}); }),
               StoreConflict);
  EXPECT_EQ(s->read([](Tx& tx) { return tx.idempotency_get("org-a", "k1"); })->request_hash, "h1");
  // Binary-safe bodies and keys.
  std::string body("a\0b", 3);
  s->write([&](Tx& tx) { tx.idempotency_put("org-a", std::string("k\0z", 3), IdempotencyRecord{"h", 200, body, 1}); });
  auto b = s->read([](Tx& tx) { return tx.idempotency_get("org-a", std::string("k\0z", 3)); });
  ASSERT_TRUE(b);
  EXPECT_EQ(b->body, body);
  EXPECT_FALSE(s->read([](Tx& tx) { return tx.idempotency_get("org-a", "k"); }));
}

// Commits never checkpoint inline (that stalled every writer queued behind one); a background
// thread folds the WAL into the database file instead, so the file must still grow as data is
// written and the WAL must not grow without bound.
TEST(Store, WalIsCheckpointedInTheBackground) {
  TempDir d;
  auto s = open_store(d);
  std::string big(4096, 'x');
  for (int i = 0; i < 800; ++i) {
    Object o = widget("w_" + std::to_string(i));
    o.data = {{"blob", big}};
    s->write([&](Tx& tx) { tx.insert(o); });
  }
  auto size = [&](const std::string& p) {
    std::error_code ec;
    auto n = std::filesystem::file_size(p, ec);
    return ec ? uintmax_t(0) : n;
  };
  // 800 objects of 4 KiB: over 3 MB once in the database file (fewer WAL frames than would
  // make a commit checkpoint inline).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (size(db_path(d)) < 3'200'000 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(size(db_path(d)), 3'200'000u) << "the WAL was not checkpointed into the database file";
  // Writers restart the WAL once it is all checkpointed, and a restart truncates the file to the
  // journal size limit: however far a burst (here ~25 MB of frames) outran the checkpointer on a
  // busy machine, the WAL comes back near the threshold as soon as writes let it.
  for (int i = 0; i < 1500; ++i) {
    Object o = widget("v_" + std::to_string(i));
    o.data = {{"blob", big}};
    s->write([&](Tx& tx) { tx.insert(o); });
  }
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (int i = 0; size(db_path(d) + "-wal") >= 24'000'000u && std::chrono::steady_clock::now() < deadline; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    Object small = widget("small_" + std::to_string(i));
    s->write([&](Tx& tx) { tx.insert(small); });
  }
  EXPECT_LT(size(db_path(d) + "-wal"), 24'000'000u);
  ListQuery q;
  q.kind = "widget";
  EXPECT_GE(s->read([&](Tx& tx) { return tx.all(q); }).size(), 2300u);
}
