// People: sign-up (when the operator enables it), login and logout with session tokens, and
// /v1/me. Password hashing (scrypt, ~0.1 s) runs outside the write transaction so a login
// never holds the store's writer lock while it hashes.
#include "api/app.h"
#include "api/objects.h"
#include "audit/audit.h"
#include "identity/crypto.h"
#include "util/error.h"
#include "util/time.h"

namespace aicloud {

static void record(Context& c, Tx& tx, const std::string& action, const std::string& actor_id,
                   const std::string& org_id, const std::string& outcome, json details = json::object()) {
  AuditRecord a;
  a.ts_ms = now_ms();
  a.org_id = org_id;
  a.actor_type = actor_id.empty() ? "anonymous" : "user";
  a.actor_id = actor_id;
  a.action = action;
  a.resource_id = actor_id;
  a.request_id = c.request_id;
  a.outcome = outcome;
  a.details = std::move(details);
  audit_append(tx, a);
}

void add_auth_routes(App& app) {
  app.add({"POST", "/v1/auth/login", Access::kPublic, false, "user.login", [](Context& c) {
             BodyReader b(parse_json_body(c.req.body()));
             std::string email = normalize_email(b.str("email", 1, 254));
             std::string password = b.str("password", 1, 1024);
             b.done();
             auto user = c.tx->find("user", email);
             // Unknown emails cost the same scrypt as known ones: timing does not tell them apart.
             static const std::string dummy = hash_password("not-a-real-password");
             bool ok = verify_password(password, user ? user->data.value("password_hash", "") : dummy) && user;
             json settings = read_settings(*c.tx);
             if (!ok) {
               c.app.store().write([&](Tx& tx) {
                 record(c, tx, "user.login", user ? user->id : "", "", "error:401", {{"email", email}});
               });
               throw unauthorized("Incorrect email or password.", "invalid_credentials");
             }
             int64_t ttl = settings.value("session_ttl_seconds", int64_t(86400));
             auto [session, token] = c.app.store().write([&](Tx& tx) {
               auto s = create_session(tx, user->id, ttl);
               record(c, tx, "user.login", user->id, "", "success");
               return s;
             });
             return json{{"object", "session"},
                         {"token", token},
                         {"expires_at", session.data["expires_at"]},
                         {"user", {{"id", user->id}, {"email", email}, {"name", user->data.value("name", "")}}}};
           }});

  app.add({"POST", "/v1/auth/logout", Access::kAny, true, "user.logout", [](Context& c) {
             if (c.who().type != PrincipalType::kUser) {
               throw bad_request("Only a session token can log out; API keys are revoked instead.", "not_a_session");
             }
             c.tx->remove("session", c.who().session_id);
             c.invalidate_auth = true;
             c.audit_resource = c.who().user_id;
             return json{{"object", "session.deleted"}, {"deleted", true}};
           }});

  app.add({"GET", "/v1/me", Access::kAny, false, "", [](Context& c) {
             const Principal& p = c.who();
             json j = {{"object", "principal"},
                       {"type", principal_type_name(p.type)},
                       {"id", p.actor_id},
                       {"organization_id", p.org_id.empty() ? json(nullptr) : json(p.org_id)},
                       {"project_id", p.project_id.empty() ? json(nullptr) : json(p.project_id)},
                       {"role", p.type == PrincipalType::kProjectKey || p.role == Role::kNone
                                    ? json(nullptr)
                                    : json(std::string(role_name(p.role)))}};
             if (p.type == PrincipalType::kUser) {
               j["email"] = p.email;
               ListQuery q;
               q.kind = "membership";
               q.parent_id = p.user_id;
               json orgs = json::array();
               for (const auto& m : c.tx->all(q)) {
                 auto org = c.tx->get("organization", m.org_id);
                 orgs.push_back({{"id", m.org_id},
                                 {"name", org ? org->data.value("name", "") : ""},
                                 {"role", m.data.value("role", "")}});
               }
               j["organizations"] = orgs;
             }
             return j;
           }});

  // Self-service sign-up: a user, an organization they own and a default project, then a
  // session. Off unless the operator turns on signup_enabled.
  app.add({"POST", "/v1/signup", Access::kPublic, false, "user.signup", [](Context& c) {
             json settings = read_settings(*c.tx);
             if (!settings.value("signup_enabled", false)) {
               throw forbidden("Self-service sign-up is disabled on this cloud; ask the operator for an account.",
                               "signup_disabled");
             }
             BodyReader b(parse_json_body(c.req.body()));
             std::string email = normalize_email(b.str("email", 1, 254));
             std::string password = b.str("password", 0, 1024);
             std::string name = b.opt_str("name", 0, 128).value_or("");
             std::string org_name = b.opt_str("organization_name", 1, 128).value_or(email + "'s organization");
             b.done();
             check_password(password);
             int64_t ttl = settings.value("session_ttl_seconds", int64_t(86400));
             return c.app.store().write([&](Tx& tx) {
               Object user = create_user(tx, email, password, name);
               Object org = create_org(tx, org_name);
               Object proj = create_project(tx, org.id, "Default project");
               add_membership(tx, org.id, user.id, Role::kOwner);
               auto [session, token] = create_session(tx, user.id, ttl);
               record(c, tx, "user.signup", user.id, org.id, "success", {{"email", email}});
               c.status = 201;
               return json{{"object", "signup"},
                           {"user", {{"id", user.id}, {"email", email}, {"name", user.data["name"]}}},
                           {"organization", org_json(org)},
                           {"project", project_json(proj)},
                           {"token", token},
                           {"expires_at", session.data["expires_at"]}};
             });
           }});
}

}  // namespace aicloud
