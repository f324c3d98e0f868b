#include "audit/audit.h"

#include "identity/crypto.h"
#include "util/json_util.h"

namespace aicloud {

std::string audit_hash(const AuditRecord& r, const std::string& prev_hash) {
  json canon = json::array({r.ts_ms, r.org_id, r.actor_type, r.actor_id, r.action, r.resource_id, r.request_id,
                            r.outcome, r.details});
  return sha256_hex(prev_hash + "|" + dump_json(canon));
}

void audit_append(Tx& tx, AuditRecord& r) {
  auto last = tx.audit_last();
  r.prev_hash = last ? last->hash : "";
  r.hash = audit_hash(r, r.prev_hash);
  tx.audit_append(r);
}

AuditVerifyResult audit_verify(Tx& tx) {
  AuditVerifyResult res;
  std::string prev;
  int64_t expect_seq = 1;
  tx.audit_scan([&](const AuditRecord& r) {
    if (!res.ok) return;
    ++res.records;
    auto fail = [&](std::string why) {
      res.ok = false;
      res.first_broken_seq = r.seq;
      res.reason = std::move(why);
    };
    if (r.seq != expect_seq) {
      fail("record " + std::to_string(expect_seq) + " is missing (deleted)");
    } else if (r.prev_hash != prev) {
      fail("prev_hash does not match the hash of the record before it");
    } else if (audit_hash(r, prev) != r.hash) {
      fail("contents do not match the record's hash (edited)");
    }
    prev = r.hash;
    expect_seq = r.seq + 1;
  });
  return res;
}

json audit_to_json(const AuditRecord& r) {
  return {{"object", "organization.audit_log"},
          {"id", "audit_" + std::to_string(r.seq)},
          {"type", r.action},
          {"effective_at", r.ts_ms / 1000},
          {"effective_at_ms", r.ts_ms},
          {"organization_id", r.org_id.empty() ? json(nullptr) : json(r.org_id)},
          {"actor", {{"type", r.actor_type}, {"id", r.actor_id}}},
          {"resource_id", r.resource_id.empty() ? json(nullptr) : json(r.resource_id)},
          {"request_id", r.request_id},
          {"outcome", r.outcome},
          {"details", r.details},
          {"hash", r.hash}};
}

}  // namespace aicloud
