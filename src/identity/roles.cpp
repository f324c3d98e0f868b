#include "identity/roles.h"

namespace aicloud {

std::string_view role_name(Role r) {
  switch (r) {
    case Role::kOwner: return "owner";
    case Role::kAdmin: return "admin";
    case Role::kMember: return "member";
    case Role::kBilling: return "billing";
    case Role::kViewer: return "viewer";
    case Role::kNone: break;
  }
  return "none";
}

std::optional<Role> parse_role(std::string_view s) {
  if (s == "owner") return Role::kOwner;
  if (s == "admin") return Role::kAdmin;
  if (s == "member") return Role::kMember;
  if (s == "billing") return Role::kBilling;
  if (s == "viewer") return Role::kViewer;
  return std::nullopt;
}

bool role_allows(Role r, Perm p) {
  switch (p) {
    case Perm::kOrgRead: return r != Role::kNone;
    case Perm::kProjectsWrite: return r == Role::kOwner || r == Role::kAdmin;
    case Perm::kKeysWrite: return r == Role::kOwner || r == Role::kAdmin || r == Role::kMember;
    case Perm::kUsersWrite: return r == Role::kOwner || r == Role::kAdmin;
    case Perm::kAdminKeysWrite: return r == Role::kOwner;
    case Perm::kAuditRead: return r == Role::kOwner || r == Role::kAdmin;
    case Perm::kBillingRead: return r == Role::kOwner || r == Role::kAdmin || r == Role::kBilling;
  }
  return false;
}

}  // namespace aicloud
