// The operator's API: organizations (create, list, get, update, suspend), settings (sign-up,
// session lifetime, default model rate limits), and the whole audit log with its verification.
// Root key only.
#include "api/app.h"
#include "api/objects.h"
#include "audit/audit.h"
#include "gateway/ratelimit.h"
#include "util/error.h"
#include "util/time.h"

namespace aicloud {

static Object get_org(Tx& tx, std::string_view id) {
  auto o = tx.get("organization", id);
  if (!o) throw not_found("organization", std::string(id));
  return *o;
}

void add_admin_routes(App& app) {
  app.add({"GET", "/admin/v1/organizations", Access::kOperator, false, "", [](Context& c) {
             return list_json(c.tx->list(list_query(c, "organization")), org_json);
           }});

  // Creates an organization, its default project, and (when owner_email is given) its owner:
  // an existing user is added as owner; a new one needs owner_password.
  app.add({"POST", "/admin/v1/organizations", Access::kOperator, true, "organization.created", [](Context& c) {
             BodyReader b(c.body);
             std::string name = b.str("name", 1, 128);
             auto owner_email = b.opt_str("owner_email", 1, 254);
             auto owner_password = b.opt_str("owner_password", 0, 1024);
             auto owner_name = b.opt_str("owner_name", 0, 128);
             b.done();
             Object org = create_org(*c.tx, name);
             create_project(*c.tx, org.id, "Default project");
             if (owner_email) {
               std::string email = normalize_email(*owner_email, "owner_email");
               auto user = c.tx->find("user", email);
               if (!user) {
                 if (!owner_password) {
                   throw invalid_field("owner_password", "'owner_password' is required when the owner is a new user.");
                 }
                 check_password(*owner_password, "owner_password");
                 user = create_user(*c.tx, email, *owner_password, owner_name.value_or(""));
               }
               add_membership(*c.tx, org.id, user->id, Role::kOwner);
               c.invalidate_auth = true;
             }
             c.status = 201;
             c.audit_org = org.id;
             c.audit_resource = org.id;
             return org_json(org);
           }});

  app.add({"GET", "/admin/v1/organizations/{org_id}", Access::kOperator, false, "", [](Context& c) {
             return org_json(get_org(*c.tx, c.param("org_id")));
           }});

  app.add({"POST", "/admin/v1/organizations/{org_id}", Access::kOperator, true, "organization.updated",
           [](Context& c) {
             Object org = get_org(*c.tx, c.param("org_id"));
             BodyReader b(c.body);
             auto name = b.opt_str("name", 1, 128);
             b.done();
             if (name) org.data["name"] = *name;
             c.tx->update(org);
             c.audit_org = org.id;
             c.audit_resource = org.id;
             return org_json(org);
           }});

  // Suspension: every credential of the organization gets 403 until it is lifted.
  auto set_status = [](bool suspend) {
    return [suspend](Context& c) {
      Object org = get_org(*c.tx, c.param("org_id"));
      BodyReader b(c.body);
      auto reason = suspend ? b.opt_str("reason", 0, 512) : std::nullopt;
      b.done();
      org.data["status"] = suspend ? "suspended" : "active";
      if (suspend) {
        org.data["suspended_reason"] = reason ? json(*reason) : json(nullptr);
        org.data["suspended_at"] = now_unix();
      } else {
        org.data.erase("suspended_reason");
        org.data.erase("suspended_at");
      }
      c.tx->update(org);
      c.invalidate_auth = true;
      c.audit_org = org.id;
      c.audit_resource = org.id;
      return org_json(org);
    };
  };
  app.add({"POST", "/admin/v1/organizations/{org_id}/suspend", Access::kOperator, true, "organization.suspended",
           set_status(true)});
  app.add({"POST", "/admin/v1/organizations/{org_id}/unsuspend", Access::kOperator, true,
           "organization.unsuspended", set_status(false)});

  app.add({"GET", "/admin/v1/settings", Access::kOperator, false, "", [](Context& c) {
             json s = read_settings(*c.tx);
             s["object"] = "settings";
             return s;
           }});
  app.add({"POST", "/admin/v1/settings", Access::kOperator, true, "settings.updated", [](Context& c) {
             BodyReader b(c.body);
             auto signup = b.opt_bool("signup_enabled");
             auto ttl = b.opt_int("session_ttl_seconds", 60, 90 * 86400);
             json s = read_settings(*c.tx);
             // Model rate limits for every project without its own (gateway/ratelimit.h).
             if (const json* rl = b.opt_object("default_rate_limits")) {
               BodyReader r(*rl, "default_rate_limits.");
               if (auto v = r.opt_int("max_requests_per_1_minute", 1, gateway::kMaxLimit)) {
                 s["default_rate_limits"]["max_requests_per_1_minute"] = *v;
               }
               if (auto v = r.opt_int("max_tokens_per_1_minute", 1, gateway::kMaxLimit)) {
                 s["default_rate_limits"]["max_tokens_per_1_minute"] = *v;
               }
               r.done();
             }
             b.done();
             if (signup) s["signup_enabled"] = *signup;
             if (ttl) s["session_ttl_seconds"] = *ttl;
             auto existing = c.tx->get("settings", "settings");
             if (existing) {
               existing->data = s;
               c.tx->update(*existing);
             } else {
               Object o;
               o.kind = "settings";
               o.id = "settings";
               o.data = s;
               c.tx->insert(o);
             }
             c.audit_details = s;
             s["object"] = "settings";
             return s;
           }});

  app.add({"GET", "/admin/v1/audit_logs", Access::kOperator, false, "", [](Context& c) {
             AuditQuery q;
             q.org_id = std::string(c.target.get("organization_id"));
             q.limit = list_query(c, "").limit;
             json data = json::array();
             for (const auto& r : c.tx->audit_list(q)) data.push_back(audit_to_json(r));
             return json{{"object", "list"}, {"data", data}};
           }});
  app.add({"GET", "/admin/v1/audit_logs/verify", Access::kOperator, false, "", [](Context& c) {
             auto r = audit_verify(*c.tx);
             return json{{"object", "audit.verification"},
                         {"ok", r.ok},
                         {"records", r.records},
                         {"first_broken_seq", r.ok ? json(nullptr) : json(r.first_broken_seq)},
                         {"reason", r.ok ? json(nullptr) : json(r.reason)}};
           }});
}

}  // namespace aicloud
