// An organization's admin API, in the shapes of OpenAI's: projects, project API keys, admin API
// keys, users and the audit log. Every object is looked up within the caller's organization:
// another organization's id is a 404.
#include "api/app.h"
#include "api/objects.h"
#include "audit/audit.h"
#include "util/error.h"
#include "util/time.h"

namespace aicloud {

static json deleted_json(const char* object, const std::string& id) {
  return {{"object", object}, {"id", id}, {"deleted", true}};
}

static Object active_project(Context& c) {
  Object p = c.owned("project", c.param("project_id"), "project");
  if (p.data.value("status", "active") != "active") {
    throw ApiError(400, "invalid_request_error", "Project '" + p.id + "' is archived and cannot be changed.",
                   "project_archived", "project_id");
  }
  return p;
}

static int count_owners(Tx& tx, const std::string& org_id) {
  ListQuery q;
  q.kind = "membership";
  q.org_id = org_id;
  int n = 0;
  for (const auto& m : tx.all(q)) n += m.data.value("role", "") == "owner";
  return n;
}

static Role parse_role_field(const std::string& s) {
  auto r = parse_role(s);
  if (!r) throw invalid_field("role", "'role' must be one of 'owner', 'admin', 'member', 'billing', 'viewer'.");
  return *r;
}

static void add_project_routes(App& app) {
  app.add({"GET", "/v1/organization/projects", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             ListQuery q = list_query(c, "project");
             q.org_id = c.org_id();
             bool include_archived = c.target.get("include_archived") == "true";
             if (include_archived) return list_json(c.tx->list(q), project_json);
             // Archived projects are hidden unless asked for: filter and keep paging exact.
             Page out;
             while (true) {
               Page p = c.tx->list(q);
               for (auto& o : p.items) {
                 if (o.data.value("status", "active") == "active") {
                   if (out.items.size() == size_t(q.limit)) {
                     out.has_more = true;
                     return list_json(out, project_json);
                   }
                   out.items.push_back(std::move(o));
                 }
               }
               if (!p.has_more) break;
               q.after = p.items.back().id;
             }
             return list_json(out, project_json);
           }});

  app.add({"POST", "/v1/organization/projects", Access::kOrg, true, "project.created", [](Context& c) {
             c.require(Perm::kProjectsWrite);
             BodyReader b(c.body);
             std::string name = b.str("name", 1, 128);
             b.done();
             Object p = create_project(*c.tx, c.org_id(), name);
             c.audit_resource = p.id;
             c.audit_details = {{"name", name}};
             c.status = 201;
             return project_json(p);
           }});

  app.add({"GET", "/v1/organization/projects/{project_id}", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             return project_json(c.owned("project", c.param("project_id"), "project"));
           }});

  app.add({"POST", "/v1/organization/projects/{project_id}", Access::kOrg, true, "project.updated", [](Context& c) {
             c.require(Perm::kProjectsWrite);
             Object p = active_project(c);
             BodyReader b(c.body);
             auto name = b.opt_str("name", 1, 128);
             b.done();
             if (name) p.data["name"] = *name;
             c.tx->update(p);
             c.audit_resource = p.id;
             if (name) c.audit_details = {{"name", *name}};
             return project_json(p);
           }});

  app.add({"POST", "/v1/organization/projects/{project_id}/archive", Access::kOrg, true, "project.archived",
           [](Context& c) {
             c.require(Perm::kProjectsWrite);
             Object p = c.owned("project", c.param("project_id"), "project");
             BodyReader(c.body).done();
             if (p.data.value("status", "active") != "archived") {
               p.data["status"] = "archived";
               p.data["archived_at"] = now_unix();
               c.tx->update(p);
             }
             c.invalidate_auth = true;  // the project's keys stop working
             c.audit_resource = p.id;
             return project_json(p);
           }});
}

static void add_key_routes(App& app) {
  app.add({"GET", "/v1/organization/projects/{project_id}/api_keys", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             Object p = c.owned("project", c.param("project_id"), "project");
             ListQuery q = list_query(c, "api_key");
             q.project_id = p.id;
             return list_json(c.tx->list(q), api_key_json);
           }});

  app.add({"POST", "/v1/organization/projects/{project_id}/api_keys", Access::kOrg, true, "api_key.created",
           [](Context& c) {
             c.require(Perm::kKeysWrite);
             Object p = active_project(c);
             BodyReader b(c.body);
             std::string name = b.opt_str("name", 0, 128).value_or("Secret key");
             b.done();
             auto [key, secret] = create_key(*c.tx, kProjectToken, c.org_id(), p.id, name, c.who().actor_id);
             json j = api_key_json(key);
             j["value"] = secret;  // shown once; only its hash is stored
             c.audit_resource = key.id;
             c.audit_details = {{"project_id", p.id}, {"name", name}};
             c.status = 201;
             return j;
           }});

  app.add({"GET", "/v1/organization/projects/{project_id}/api_keys/{key_id}", Access::kOrg, false, "",
           [](Context& c) {
             c.require(Perm::kOrgRead);
             Object p = c.owned("project", c.param("project_id"), "project");
             Object k = c.owned("api_key", c.param("key_id"), "API key");
             if (k.project_id != p.id) throw not_found("API key", k.id);
             return api_key_json(k);
           }});

  app.add({"DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}", Access::kOrg, true,
           "api_key.deleted", [](Context& c) {
             c.require(Perm::kKeysWrite);
             Object p = c.owned("project", c.param("project_id"), "project");
             Object k = c.owned("api_key", c.param("key_id"), "API key");
             if (k.project_id != p.id) throw not_found("API key", k.id);
             c.tx->remove("api_key", k.id);
             c.invalidate_auth = true;
             c.audit_resource = k.id;
             return deleted_json("organization.project.api_key.deleted", k.id);
           }});

  app.add({"GET", "/v1/organization/admin_api_keys", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kAdminKeysWrite);
             ListQuery q = list_query(c, "admin_key");
             q.org_id = c.org_id();
             return list_json(c.tx->list(q), admin_key_json);
           }});

  app.add({"POST", "/v1/organization/admin_api_keys", Access::kOrg, true, "admin_api_key.created", [](Context& c) {
             c.require(Perm::kAdminKeysWrite);
             BodyReader b(c.body);
             std::string name = b.opt_str("name", 0, 128).value_or("Admin key");
             b.done();
             auto [key, secret] = create_key(*c.tx, kAdminToken, c.org_id(), "", name, c.who().actor_id);
             json j = admin_key_json(key);
             j["value"] = secret;
             c.audit_resource = key.id;
             c.audit_details = {{"name", name}};
             c.status = 201;
             return j;
           }});

  app.add({"GET", "/v1/organization/admin_api_keys/{key_id}", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kAdminKeysWrite);
             return admin_key_json(c.owned("admin_key", c.param("key_id"), "admin API key"));
           }});

  app.add({"DELETE", "/v1/organization/admin_api_keys/{key_id}", Access::kOrg, true, "admin_api_key.deleted",
           [](Context& c) {
             c.require(Perm::kAdminKeysWrite);
             Object k = c.owned("admin_key", c.param("key_id"), "admin API key");
             c.tx->remove("admin_key", k.id);
             c.invalidate_auth = true;
             c.audit_resource = k.id;
             return deleted_json("organization.admin_api_key.deleted", k.id);
           }});
}

static void add_user_routes(App& app) {
  app.add({"GET", "/v1/organization/users", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             ListQuery q = list_query(c, "membership");
             q.org_id = c.org_id();
             // Paging is over memberships; the cursor is the user id the client saw.
             if (!q.after.empty()) {
               auto m = find_membership(*c.tx, q.org_id, q.after);
               q.after = m ? m->id : "";
               if (!m) return list_json(Page{}, nullptr);
             }
             Page p = c.tx->list(q);
             json data = json::array();
             for (const auto& m : p.items) {
               if (auto u = c.tx->get("user", m.parent_id)) data.push_back(user_json(*u, m));
             }
             return json{{"object", "list"},
                         {"data", data},
                         {"first_id", data.empty() ? json(nullptr) : data.front()["id"]},
                         {"last_id", data.empty() ? json(nullptr) : data.back()["id"]},
                         {"has_more", p.has_more}};
           }});

  // Adds a user to the organization: an existing account by email, or a new one with a password.
  app.add({"POST", "/v1/organization/users", Access::kOrg, true, "user.added", [](Context& c) {
             c.require(Perm::kUsersWrite);
             BodyReader b(c.body);
             std::string email = normalize_email(b.str("email", 1, 254));
             Role role = parse_role_field(b.opt_str("role", 1, 16).value_or("member"));
             auto password = b.opt_str("password", 0, 1024);
             auto name = b.opt_str("name", 0, 128);
             b.done();
             if (role == Role::kOwner && c.who().role != Role::kOwner) {
               throw forbidden("Only an owner can add another owner.");
             }
             auto user = c.tx->find("user", email);
             if (!user) {
               if (!password) throw invalid_field("password", "'password' is required to create a new user.");
               check_password(*password);
               user = create_user(*c.tx, email, *password, name.value_or(""));
             }
             Object m = add_membership(*c.tx, c.org_id(), user->id, role);
             c.invalidate_auth = true;
             c.audit_resource = user->id;
             c.audit_details = {{"email", email}, {"role", std::string(role_name(role))}};
             c.status = 201;
             return user_json(*user, m);
           }});

  app.add({"GET", "/v1/organization/users/{user_id}", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             std::string uid(c.param("user_id"));
             auto m = find_membership(*c.tx, c.org_id(), uid);
             auto u = c.tx->get("user", uid);
             if (!m || !u) throw not_found("user", uid);
             return user_json(*u, *m);
           }});

  app.add({"POST", "/v1/organization/users/{user_id}", Access::kOrg, true, "user.role_changed", [](Context& c) {
             c.require(Perm::kUsersWrite);
             std::string uid(c.param("user_id"));
             auto m = find_membership(*c.tx, c.org_id(), uid);
             auto u = c.tx->get("user", uid);
             if (!m || !u) throw not_found("user", uid);
             BodyReader b(c.body);
             Role role = parse_role_field(b.str("role", 1, 16));
             b.done();
             Role old = parse_role(m->data.value("role", "")).value_or(Role::kNone);
             if ((role == Role::kOwner || old == Role::kOwner) && c.who().role != Role::kOwner) {
               throw forbidden("Only an owner can grant or take away the owner role.");
             }
             if (old == Role::kOwner && role != Role::kOwner && count_owners(*c.tx, c.org_id()) <= 1) {
               throw conflict("This is the organization's last owner; make another user owner first.", "last_owner");
             }
             m->data["role"] = std::string(role_name(role));
             c.tx->update(*m);
             c.invalidate_auth = true;
             c.audit_resource = uid;
             c.audit_details = {{"from", std::string(role_name(old))}, {"to", std::string(role_name(role))}};
             return user_json(*u, *m);
           }});

  app.add({"DELETE", "/v1/organization/users/{user_id}", Access::kOrg, true, "user.removed", [](Context& c) {
             c.require(Perm::kUsersWrite);
             std::string uid(c.param("user_id"));
             auto m = find_membership(*c.tx, c.org_id(), uid);
             if (!m) throw not_found("user", uid);
             bool owner = m->data.value("role", "") == "owner";
             if (owner && c.who().role != Role::kOwner) throw forbidden("Only an owner can remove an owner.");
             if (owner && count_owners(*c.tx, c.org_id()) <= 1) {
               throw conflict("This is the organization's last owner and cannot be removed.", "last_owner");
             }
             c.tx->remove("membership", m->id);
             c.invalidate_auth = true;
             c.audit_resource = uid;
             return deleted_json("organization.user.deleted", uid);
           }});
}

static int64_t time_param(const Context& c, const char* name) {
  if (!c.target.has(name)) return 0;
  auto s = c.target.get(name);
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string_view::npos) {
    throw invalid_field(name, std::string("'") + name + "' must be a unix time in seconds.");
  }
  return std::stoll(std::string(s));
}

static void add_audit_routes(App& app) {
  app.add({"GET", "/v1/organization/audit_logs", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kAuditRead);
             AuditQuery q;
             q.org_id = c.org_id();
             q.limit = list_query(c, "").limit;
             q.actor_id = std::string(c.target.get("actor_id"));
             q.action = std::string(c.target.get("action"));
             if (q.action.empty()) q.action = std::string(c.target.get("event_types[]"));
             q.resource_id = std::string(c.target.get("resource_id"));
             if (int64_t t = time_param(c, "effective_at[gte]")) q.since_ms = t * 1000;
             if (int64_t t = time_param(c, "effective_at[lte]")) q.until_ms = t * 1000 + 999;
             if (auto after = c.target.get("after"); !after.empty()) {
               std::string a(after);
               if (!a.starts_with("audit_") || a.size() > 26 || a.find_first_not_of("0123456789", 6) != std::string::npos ||
                   a.size() == 6) {
                 throw invalid_field("after", "'after' must be an audit log id such as audit_42.");
               }
               q.before_seq = std::stoll(a.substr(6));
             }
             int limit = q.limit;
             q.limit = limit + 1;
             auto rows = c.tx->audit_list(q);
             bool has_more = rows.size() > size_t(limit);
             if (has_more) rows.pop_back();
             json data = json::array();
             for (const auto& r : rows) data.push_back(audit_to_json(r));
             return json{{"object", "list"},
                         {"data", data},
                         {"first_id", data.empty() ? json(nullptr) : data.front()["id"]},
                         {"last_id", data.empty() ? json(nullptr) : data.back()["id"]},
                         {"has_more", has_more}};
           }});
}

void add_org_routes(App& app) {
  add_project_routes(app);
  add_key_routes(app);
  add_user_routes(app);
  add_audit_routes(app);
}

}  // namespace aicloud
