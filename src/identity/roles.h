// Organization roles and what each may do. One table, checked on every route.
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace aicloud {

enum class Role { kNone = 0, kViewer, kBilling, kMember, kAdmin, kOwner };

std::string_view role_name(Role r);
std::optional<Role> parse_role(std::string_view s);  // owner|admin|member|billing|viewer

enum class Perm {
  kOrgRead,        // projects, api keys (redacted), users: list and get
  kProjectsWrite,  // create, update, archive projects
  kKeysWrite,      // create and revoke project API keys
  kUsersWrite,     // add users, change roles, remove users
  kAdminKeysWrite, // create and revoke organization admin keys
  kAuditRead,      // read the organization's audit log
  kBillingRead,    // usage and costs
};

bool role_allows(Role r, Perm p);

}  // namespace aicloud
