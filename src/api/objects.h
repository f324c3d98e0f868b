// The identity objects (organizations, projects, keys, users, memberships): how each is created
// in the store and how it is shown on the wire (OpenAI's organization admin API shapes).
#pragma once
#include <string>
#include <utility>

#include "identity/auth.h"
#include "identity/roles.h"
#include "store/store.h"
#include "util/json_util.h"

namespace aicloud {

Object create_org(Tx& tx, const std::string& name);
Object create_project(Tx& tx, const std::string& org_id, const std::string& name);
// Returns the stored key and its secret (shown to the caller once, never stored).
std::pair<Object, std::string> create_key(Tx& tx, const TokenKind& kind, const std::string& org_id,
                                          const std::string& project_id, const std::string& name,
                                          const std::string& created_by);
Object create_user(Tx& tx, const std::string& email, const std::string& password, const std::string& name);
Object add_membership(Tx& tx, const std::string& org_id, const std::string& user_id, Role role);
std::optional<Object> find_membership(Tx& tx, const std::string& org_id, const std::string& user_id);
// A session token for a user; returns (session, token).
std::pair<Object, std::string> create_session(Tx& tx, const std::string& user_id, int64_t ttl_seconds);

// Validation shared by every route that takes these fields (400 naming the field).
std::string normalize_email(const std::string& email, const std::string& param = "email");
void check_password(const std::string& password, const std::string& param = "password");

json org_json(const Object& o);
json project_json(const Object& o);
json api_key_json(const Object& o);    // organization.project.api_key
json admin_key_json(const Object& o);  // organization.admin_api_key
json user_json(const Object& user, const Object& membership);  // organization.user

}  // namespace aicloud
