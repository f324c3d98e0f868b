#include "api/objects.h"

#include <algorithm>

#include "identity/crypto.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"

namespace aicloud {

static json nullable(const json& j, const char* k) { return j.contains(k) ? j[k] : json(nullptr); }

Object create_org(Tx& tx, const std::string& name) {
  Object o;
  o.kind = "organization";
  o.id = new_id("org-");
  o.org_id = o.id;
  o.data = {{"name", name}, {"status", "active"}};
  tx.insert(o);
  return o;
}

Object create_project(Tx& tx, const std::string& org_id, const std::string& name) {
  Object o;
  o.kind = "project";
  o.id = new_id("proj_");
  o.org_id = org_id;
  o.project_id = o.id;
  o.data = {{"name", name}, {"status", "active"}};
  tx.insert(o);
  return o;
}

std::pair<Object, std::string> create_key(Tx& tx, const TokenKind& kind, const std::string& org_id,
                                          const std::string& project_id, const std::string& name,
                                          const std::string& created_by) {
  std::string secret = make_secret(kind);
  Object o;
  o.kind = std::string(kind.store_kind);
  o.id = new_id("key_");
  o.org_id = org_id;
  o.project_id = project_id;
  o.lookup = sha256_hex(secret);
  o.data = {{"name", name}, {"redacted_value", redact_secret(secret)}, {"created_by", created_by},
            {"last_used_at", nullptr}};
  tx.insert(o);
  return {o, secret};
}

Object create_user(Tx& tx, const std::string& email, const std::string& password, const std::string& name) {
  Object o;
  o.kind = "user";
  o.id = new_id("user-");
  o.lookup = email;
  o.data = {{"email", email}, {"name", name.empty() ? email.substr(0, email.find('@')) : name},
            {"password_hash", hash_password(password)}};
  try {
    tx.insert(o);
  } catch (const StoreConflict&) {
    throw conflict("A user with this email already exists.", "user_exists");
  }
  return o;
}

Object add_membership(Tx& tx, const std::string& org_id, const std::string& user_id, Role role) {
  Object m;
  m.kind = "membership";
  m.id = new_id("mem_");
  m.org_id = org_id;
  m.parent_id = user_id;
  m.lookup = org_id + "/" + user_id;
  m.data = {{"role", std::string(role_name(role))}};
  try {
    tx.insert(m);
  } catch (const StoreConflict&) {
    throw conflict("This user is already a member of the organization.", "already_member");
  }
  return m;
}

std::optional<Object> find_membership(Tx& tx, const std::string& org_id, const std::string& user_id) {
  return tx.find("membership", org_id + "/" + user_id);
}

std::pair<Object, std::string> create_session(Tx& tx, const std::string& user_id, int64_t ttl_seconds) {
  std::string token = make_secret(kSessionToken);
  Object s;
  s.kind = "session";
  s.id = new_id("sess_");
  s.parent_id = user_id;
  s.lookup = sha256_hex(token);
  s.data = {{"expires_at", now_unix() + ttl_seconds}};
  tx.insert(s);
  return {s, token};
}

std::string normalize_email(const std::string& email, const std::string& param) {
  std::string e = email;
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  auto at = e.find('@');
  bool ok = at != std::string::npos && at > 0 && at + 1 < e.size() && e.find('@', at + 1) == std::string::npos &&
            e.find('.', at) != std::string::npos && e.size() <= 254;
  for (unsigned char ch : e) ok = ok && ch > 32 && ch < 127;
  if (!ok) throw invalid_field(param, "'" + param + "' must be an email address such as ada@example.com.");
  return e;
}

void check_password(const std::string& password, const std::string& param) {
  if (password.size() < 8) throw invalid_field(param, "'" + param + "' must be at least 8 characters.");
  if (password.size() > 1024) throw invalid_field(param, "'" + param + "' must be at most 1024 characters.");
}

json org_json(const Object& o) {
  return {{"object", "organization"},
          {"id", o.id},
          {"name", o.data.value("name", "")},
          {"status", o.data.value("status", "active")},
          {"suspended_reason", nullable(o.data, "suspended_reason")},
          {"created_at", o.created_at}};
}

json project_json(const Object& o) {
  return {{"object", "organization.project"},
          {"id", o.id},
          {"name", o.data.value("name", "")},
          {"created_at", o.created_at},
          {"archived_at", nullable(o.data, "archived_at")},
          {"status", o.data.value("status", "active")}};
}

static json key_json(const Object& o, const char* object) {
  return {{"object", object},
          {"id", o.id},
          {"name", o.data.value("name", "")},
          {"redacted_value", o.data.value("redacted_value", "")},
          {"created_at", o.created_at},
          {"last_used_at", nullable(o.data, "last_used_at")},
          {"owner", {{"type", "user"}, {"id", o.data.value("created_by", "")}}}};
}

json api_key_json(const Object& o) {
  json j = key_json(o, "organization.project.api_key");
  j["project_id"] = o.project_id;
  return j;
}

json admin_key_json(const Object& o) { return key_json(o, "organization.admin_api_key"); }

json user_json(const Object& user, const Object& membership) {
  return {{"object", "organization.user"},
          {"id", user.id},
          {"name", user.data.value("name", "")},
          {"email", user.data.value("email", "")},
          {"role", membership.data.value("role", "")},
          {"added_at", membership.created_at}};
}

}  // namespace aicloud
