#include "store/migrations.h"

namespace aicloud {

const std::vector<std::string>& sqlite_migrations() {
  static const std::vector<std::string> m = {
      // 1: objects, the audit chain, idempotency records.
      R"sql(
CREATE TABLE objects (
  seq        INTEGER PRIMARY KEY AUTOINCREMENT,
  kind       TEXT NOT NULL,
  id         TEXT NOT NULL UNIQUE,
  org_id     TEXT NOT NULL DEFAULT '',
  project_id TEXT NOT NULL DEFAULT '',
  parent_id  TEXT NOT NULL DEFAULT '',
  lookup     TEXT,
  created_at INTEGER NOT NULL,
  version    INTEGER NOT NULL,
  data       TEXT NOT NULL
);
CREATE UNIQUE INDEX objects_lookup  ON objects(kind, lookup) WHERE lookup IS NOT NULL;
CREATE INDEX        objects_org     ON objects(kind, org_id, seq);
CREATE INDEX        objects_project ON objects(kind, project_id, seq);
CREATE INDEX        objects_parent  ON objects(kind, parent_id, seq);

CREATE TABLE audit_log (
  seq         INTEGER PRIMARY KEY,
  ts_ms       INTEGER NOT NULL,
  org_id      TEXT NOT NULL,
  actor_type  TEXT NOT NULL,
  actor_id    TEXT NOT NULL,
  action      TEXT NOT NULL,
  resource_id TEXT NOT NULL,
  request_id  TEXT NOT NULL,
  outcome     TEXT NOT NULL,
  details     TEXT NOT NULL,
  prev_hash   TEXT NOT NULL,
  hash        TEXT NOT NULL
);
CREATE INDEX audit_org ON audit_log(org_id, seq);

CREATE TABLE idempotency (
  scope        TEXT NOT NULL,
  key          TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  status       INTEGER NOT NULL,
  body         TEXT NOT NULL,
  created_at   INTEGER NOT NULL,
  PRIMARY KEY (scope, key)
) WITHOUT ROWID;
)sql",
      // 1 -> 2: usage records (metering). One row per finished model request; append-only,
      // group-committed; aggregated by time bucket for the usage API and billing.
      R"sql(
CREATE TABLE usage_records (
  seq            INTEGER PRIMARY KEY,
  ts_ms          INTEGER NOT NULL,
  org_id         TEXT NOT NULL,
  project_id     TEXT NOT NULL,
  api_key_id     TEXT NOT NULL,
  model          TEXT NOT NULL,
  deployment_id  TEXT NOT NULL,
  region         TEXT NOT NULL,
  endpoint       TEXT NOT NULL,
  input_tokens   INTEGER NOT NULL,
  output_tokens  INTEGER NOT NULL,
  cached_tokens  INTEGER NOT NULL,
  latency_ms     INTEGER NOT NULL,
  status         INTEGER NOT NULL,
  request_id     TEXT NOT NULL
);
CREATE INDEX usage_org_ts ON usage_records(org_id, ts_ms);
)sql",
      // 2 -> 3: the usage journal's watermark (metering/journal.h). Records reach the client's
      // acknowledgement through a journal segment; a segment is folded into usage_records in one
      // transaction that also raises folded_segment, so a restart folds each segment exactly once.
      R"sql(
CREATE TABLE usage_journal (
  id              INTEGER PRIMARY KEY CHECK (id = 1),
  folded_segment  INTEGER NOT NULL
);
INSERT INTO usage_journal(id, folded_segment) VALUES (1, 0);
)sql",
      // 3 -> 4: usage kept as per-second sums instead of one row per request. A row per request
      // cost the fold ~10,000 instructions of SQLite's per record (two b-trees, 14 columns), on
      // the gateway's own CPUs, and grew by a row per request (864 million a day at 10,000
      // requests/s) for a usage API that only ever reads sums over whole seconds (its buckets are
      // 1m, 1h and 1d from a start in unix seconds). A second's sums answer every such query
      // exactly. What a request's row had beyond its sums (its id and latency) is in the
      // gateway's access log; the latency is kept here as a sum, for means.
      R"sql(
CREATE TABLE usage_seconds (
  org_id         TEXT NOT NULL,
  ts_s           INTEGER NOT NULL,
  project_id     TEXT NOT NULL,
  api_key_id     TEXT NOT NULL,
  model          TEXT NOT NULL,
  deployment_id  TEXT NOT NULL,
  region         TEXT NOT NULL,
  endpoint       TEXT NOT NULL,
  status         INTEGER NOT NULL,
  requests       INTEGER NOT NULL,
  input_tokens   INTEGER NOT NULL,
  output_tokens  INTEGER NOT NULL,
  cached_tokens  INTEGER NOT NULL,
  latency_ms     INTEGER NOT NULL,
  PRIMARY KEY (org_id, ts_s, project_id, api_key_id, model, deployment_id, region, endpoint, status)
) WITHOUT ROWID;
INSERT INTO usage_seconds
  SELECT org_id, ts_ms / 1000, project_id, api_key_id, model, deployment_id, region, endpoint, status, COUNT(*),
         SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(latency_ms)
  FROM usage_records
  GROUP BY org_id, ts_ms / 1000, project_id, api_key_id, model, deployment_id, region, endpoint, status;
DROP TABLE usage_records;
)sql",
  };
  return m;
}

}  // namespace aicloud
