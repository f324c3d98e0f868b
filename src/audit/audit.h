// The audit chain: every mutation leaves a record; each record's hash covers the previous
// record's hash and its own fields, so editing or deleting any record breaks the chain at that
// point and `aicloud audit verify` names it.
#pragma once
#include <cstdint>
#include <string>

#include "store/store.h"

namespace aicloud {

// sha256(prev_hash || canonical JSON of the record's fields other than seq and the hashes).
std::string audit_hash(const AuditRecord& r, const std::string& prev_hash);

// Links r to the chain's head (sets prev_hash, hash, seq) and appends it, inside tx.
void audit_append(Tx& tx, AuditRecord& r);

struct AuditVerifyResult {
  bool ok = true;
  int64_t records = 0;
  int64_t first_broken_seq = 0;  // 0 when ok
  std::string reason;
};

AuditVerifyResult audit_verify(Tx& tx);

nlohmann::json audit_to_json(const AuditRecord& r);  // the API shape (organization.audit_log)

}  // namespace aicloud
