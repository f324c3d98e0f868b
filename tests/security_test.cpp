// The API's security promises, checked against a real server process, over every route:
//
//   - every route is in kRoutes below, and kRoutes names only real routes (SecurityRouteTable.*);
//   - no credential, or a malformed or unknown one: 401 (public routes aside);
//   - another organization's object ids: 404, never 403, with nothing in the answer that a
//     made-up id would not also get (existence does not leak);
//   - too small a role, a project key on the admin API, a non-operator on /admin/v1, a non-node
//     on /agent/v1: 403;
//   - a deleted key, a logged-out session, a suspended organization, an archived project: refused
//     on the very next request (the auth cache is no excuse), and restored by unsuspend;
//   - the audit chain: an edited or deleted record is found by `aicloud audit verify`, by
//     audit_verify() on the store, and by GET /admin/v1/audit_logs/verify.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "audit/audit.h"
#include "support/server_process.h"
#include "util/ids.h"

using namespace aicloud;
using namespace aicloud::test;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// The route table. Keep it complete: SecurityRouteTable.CoversEveryRegisteredRoute fails when a route is
// registered in src/ without a row here (and when a row names a route that no longer exists).

enum class Acc {
  kPublic,    // no credential
  kAny,       // any credential
  kOperator,  // the operator's root key
  kOrg,       // acting in an organization (roles below)
  kNode,      // a node agent
  kProject,   // a project key, or a member naming a project in OpenAI-Project (roles below)
};

// Organization roles, as bits, for what an org route allows (mirrors identity/roles.cpp; the
// test states the policy independently so that a change to it is a visible change here).
enum : unsigned { kViewer = 1, kBilling = 2, kMember = 4, kAdmin = 8, kOwner = 16 };
constexpr unsigned kAnyRole = kViewer | kBilling | kMember | kAdmin | kOwner;
constexpr unsigned kProjectsWrite = kAdmin | kOwner;
constexpr unsigned kKeysWrite = kMember | kAdmin | kOwner;
constexpr unsigned kUsersWrite = kAdmin | kOwner;
constexpr unsigned kAdminKeys = kOwner;
constexpr unsigned kAuditRead = kAdmin | kOwner;
constexpr unsigned kProjectUse = kMember | kAdmin | kOwner;  // users naming a project

struct Route {
  const char* method;
  const char* path;
  Acc access;
  unsigned roles = 0;  // org routes: the roles allowed
  unsigned anon = 401; // status without any credential (public routes: what an empty request gets)
};

const std::vector<Route> kRoutes = {
    // system_routes.cpp
    {"GET", "/healthz", Acc::kPublic, 0, 200},
    {"GET", "/readyz", Acc::kPublic, 0, 200},
    {"GET", "/metrics", Acc::kPublic, 0, 200},
    // auth_routes.cpp
    {"POST", "/v1/auth/login", Acc::kPublic, 0, 400},  // no email: 400, not 401
    {"POST", "/v1/auth/logout", Acc::kAny},
    {"GET", "/v1/me", Acc::kAny},
    {"POST", "/v1/signup", Acc::kPublic, 0, 403},  // off by default: signup_disabled
    // admin_routes.cpp
    {"GET", "/admin/v1/organizations", Acc::kOperator},
    {"POST", "/admin/v1/organizations", Acc::kOperator},
    {"GET", "/admin/v1/organizations/{org_id}", Acc::kOperator},
    {"POST", "/admin/v1/organizations/{org_id}", Acc::kOperator},
    {"POST", "/admin/v1/organizations/{org_id}/suspend", Acc::kOperator},
    {"POST", "/admin/v1/organizations/{org_id}/unsuspend", Acc::kOperator},
    {"GET", "/admin/v1/settings", Acc::kOperator},
    {"POST", "/admin/v1/settings", Acc::kOperator},
    {"GET", "/admin/v1/audit_logs", Acc::kOperator},
    {"GET", "/admin/v1/audit_logs/verify", Acc::kOperator},
    // org_routes.cpp
    {"GET", "/v1/organization/projects", Acc::kOrg, kAnyRole},
    {"POST", "/v1/organization/projects", Acc::kOrg, kProjectsWrite},
    {"GET", "/v1/organization/projects/{project_id}", Acc::kOrg, kAnyRole},
    {"POST", "/v1/organization/projects/{project_id}", Acc::kOrg, kProjectsWrite},
    {"POST", "/v1/organization/projects/{project_id}/archive", Acc::kOrg, kProjectsWrite},
    {"GET", "/v1/organization/projects/{project_id}/api_keys", Acc::kOrg, kAnyRole},
    {"POST", "/v1/organization/projects/{project_id}/api_keys", Acc::kOrg, kKeysWrite},
    {"GET", "/v1/organization/projects/{project_id}/api_keys/{key_id}", Acc::kOrg, kAnyRole},
    {"DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}", Acc::kOrg, kKeysWrite},
    {"GET", "/v1/organization/admin_api_keys", Acc::kOrg, kAdminKeys},
    {"POST", "/v1/organization/admin_api_keys", Acc::kOrg, kAdminKeys},
    {"GET", "/v1/organization/admin_api_keys/{key_id}", Acc::kOrg, kAdminKeys},
    {"DELETE", "/v1/organization/admin_api_keys/{key_id}", Acc::kOrg, kAdminKeys},
    {"GET", "/v1/organization/users", Acc::kOrg, kAnyRole},
    {"POST", "/v1/organization/users", Acc::kOrg, kUsersWrite},
    {"GET", "/v1/organization/users/{user_id}", Acc::kOrg, kAnyRole},
    {"POST", "/v1/organization/users/{user_id}", Acc::kOrg, kUsersWrite},
    {"DELETE", "/v1/organization/users/{user_id}", Acc::kOrg, kUsersWrite},
    {"GET", "/v1/organization/audit_logs", Acc::kOrg, kAuditRead},
    // capacity_routes.cpp
    {"GET", "/admin/v1/regions", Acc::kOperator},
    {"POST", "/admin/v1/regions", Acc::kOperator},
    {"GET", "/admin/v1/regions/{region_id}", Acc::kOperator},
    {"GET", "/admin/v1/zones", Acc::kOperator},
    {"POST", "/admin/v1/zones", Acc::kOperator},
    {"GET", "/admin/v1/zones/{zone_id}", Acc::kOperator},
    {"POST", "/admin/v1/zones/{zone_id}", Acc::kOperator},
    {"GET", "/admin/v1/capacity_providers", Acc::kOperator},
    {"POST", "/admin/v1/capacity_providers", Acc::kOperator},
    {"GET", "/admin/v1/join_tokens", Acc::kOperator},
    {"POST", "/admin/v1/join_tokens", Acc::kOperator},
    {"DELETE", "/admin/v1/join_tokens/{token_id}", Acc::kOperator},
    {"GET", "/admin/v1/nodes", Acc::kOperator},
    {"GET", "/admin/v1/nodes/{node_id}", Acc::kOperator},
    {"POST", "/admin/v1/nodes/{node_id}/cordon", Acc::kOperator},
    {"POST", "/admin/v1/nodes/{node_id}/uncordon", Acc::kOperator},
    {"POST", "/admin/v1/nodes/{node_id}/drain", Acc::kOperator},
    {"POST", "/agent/v1/join", Acc::kPublic, 0, 400},  // authenticated by the join token in the body
    {"POST", "/agent/v1/heartbeat", Acc::kNode},
    // compute_routes.cpp
    {"POST", "/v1/compute/instances", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/instances", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/instances/{id}", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/instances/{id}/stop", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/instances/{id}/logs", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/jobs", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/jobs", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/jobs/{id}", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/jobs/{id}/cancel", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/jobs/{id}/logs", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/services", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/services", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/services/{id}", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/services/{id}/stop", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/services/{id}/logs", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/offers", Acc::kProject, kProjectUse},
    {"DELETE", "/v1/compute/instances/{id}", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/instances/{id}/start", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/instances/{id}/exec", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/instances/{id}/exec/{exec_id}", Acc::kProject, kProjectUse},
    {"DELETE", "/v1/compute/jobs/{id}", Acc::kProject, kProjectUse},
    {"DELETE", "/v1/compute/services/{id}", Acc::kProject, kProjectUse},
    {"POST", "/agent/v1/execs/{id}/status", Acc::kNode},
    // model_routes.cpp (the registry: its routes check the caller's kind themselves)
    {"POST", "/v1/models/import", Acc::kAny},
    {"POST", "/v1/models/uploads", Acc::kAny},
    {"PUT", "/v1/models/uploads/{id}/parts/{n}", Acc::kAny},
    {"POST", "/v1/models/uploads/{id}/complete", Acc::kAny},
    {"POST", "/v1/models/uploads/{id}/cancel", Acc::kAny},
    {"DELETE", "/v1/models/{id}", Acc::kAny},
    {"DELETE", "/v1/models/{ns}/{name}", Acc::kAny},
    {"GET", "/v1/organization/models", Acc::kOrg, kAnyRole},
    {"GET", "/admin/v1/models", Acc::kOperator},
    {"DELETE", "/admin/v1/models/{registry_id}", Acc::kOperator},
    {"GET", "/agent/v1/models/{id}", Acc::kNode},
    {"GET", "/agent/v1/models/{id}/file", Acc::kNode},
    // gateway.cpp, deployments.cpp, usage_routes.cpp
    {"GET", "/v1/models", Acc::kProject, kProjectUse},
    {"GET", "/v1/models/{id}", Acc::kProject, kProjectUse},
    {"GET", "/v1/models/{ns}/{name}", Acc::kProject, kProjectUse},
    {"POST", "/v1/chat/completions", Acc::kProject, kProjectUse},
    {"POST", "/v1/completions", Acc::kProject, kProjectUse},
    {"POST", "/v1/embeddings", Acc::kProject, kProjectUse},
    {"POST", "/v1/deployments", Acc::kProject, kProjectUse},
    {"GET", "/v1/deployments", Acc::kProject, kProjectUse},
    {"GET", "/v1/deployments/{id}", Acc::kProject, kProjectUse},
    {"POST", "/v1/deployments/{id}", Acc::kProject, kProjectUse},
    {"DELETE", "/v1/deployments/{id}", Acc::kProject, kProjectUse},
    {"GET", "/admin/v1/endpoints", Acc::kOperator},
    {"POST", "/admin/v1/endpoints", Acc::kOperator},
    {"GET", "/admin/v1/endpoints/{id}", Acc::kOperator},
    {"DELETE", "/admin/v1/endpoints/{id}", Acc::kOperator},
    {"GET", "/v1/organization/usage/completions", Acc::kOrg, kBilling | kAdmin | kOwner},
    {"GET", "/v1/organization/usage/embeddings", Acc::kOrg, kBilling | kAdmin | kOwner},
    // rate_limit_routes.cpp
    {"GET", "/v1/organization/projects/{project_id}/rate_limits", Acc::kOrg, kAnyRole},
    {"POST", "/v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}", Acc::kOrg, kProjectsWrite},
    // reservation_routes.cpp
    {"POST", "/v1/compute/reservations", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/reservations", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/reservations/{id}", Acc::kProject, kProjectUse},
    {"POST", "/v1/compute/reservations/{id}/cancel", Acc::kProject, kProjectUse},
    {"GET", "/v1/compute/quotas", Acc::kProject, kProjectUse},
    {"GET", "/admin/v1/reservations", Acc::kOperator},
    {"POST", "/admin/v1/reservations/{id}/approve", Acc::kOperator},
    {"POST", "/admin/v1/reservations/{id}/reject", Acc::kOperator},
    {"GET", "/admin/v1/organizations/{org_id}/quotas", Acc::kOperator},
    {"POST", "/admin/v1/organizations/{org_id}/quotas", Acc::kOperator},
    {"DELETE", "/admin/v1/organizations/{org_id}/quotas/{quota_id}", Acc::kOperator},
    {"GET", "/agent/v1/assignments", Acc::kNode},
    {"POST", "/agent/v1/assignments/{id}/status", Acc::kNode},
};

std::string route_name(const Route& r) { return std::string(r.method) + " " + r.path; }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t at = 0; (at = s.find(from, at)) != std::string::npos; at += to.size()) s.replace(at, from.size(), to);
  return s;
}

// The ids that fill a route's placeholders.
struct Ids {
  std::string org, project, project_key, admin_key, user, region, zone, token, node;
  std::string instance, job, service, assignment;  // {id} under /v1/compute/<kind>s and /agent/v1/assignments
  std::string exec, reservation, quota;
  std::string deployment = "dep_" + random_base62(24);        // made up: a deployment needs a model file
  std::string model = "no-such-model", upload = "upload_" + random_base62(24);
  std::string endpoint;
};

// Reservations belong to the organization, not to one project: another project of the same
// organization may see them.
bool org_owned(const Route& r) { return std::string(r.path).starts_with("/v1/compute/reservations"); }

std::string fill(const Route& r, const Ids& ids) {
  std::string p = r.path;
  bool admin_key = p.find("/admin_api_keys/") != std::string::npos;
  std::string id = p.starts_with("/v1/compute/instances/") ? ids.instance
                   : p.starts_with("/v1/compute/jobs/")    ? ids.job
                   : p.starts_with("/v1/compute/services/") ? ids.service
                   : p.starts_with("/agent/v1/assignments/") ? ids.assignment
                   : p.starts_with("/agent/v1/execs/") ? ids.exec
                   : p.starts_with("/v1/deployments/") ? ids.deployment
                   : p.starts_with("/admin/v1/endpoints/") ? ids.endpoint
                   : p.starts_with("/v1/models/uploads/") ? ids.upload
                   : p.starts_with("/v1/models/") || p.starts_with("/agent/v1/models/") ? ids.model
                   : p.starts_with("/v1/compute/reservations/") || p.starts_with("/admin/v1/reservations/") ? ids.reservation
                                                             : "";
  if (!id.empty()) p = replace_all(p, "{id}", id);
  const std::vector<std::pair<std::string, std::string>> subs = {
      {"{org_id}", ids.org},     {"{project_id}", ids.project}, {"{key_id}", admin_key ? ids.admin_key : ids.project_key},
      {"{user_id}", ids.user},   {"{region_id}", ids.region},   {"{zone_id}", ids.zone},
      {"{token_id}", ids.token}, {"{node_id}", ids.node}, {"{exec_id}", ids.exec}, {"{quota_id}", ids.quota},
      {"{ns}", "acme"}, {"{name}", ids.model}, {"{n}", "1"}, {"{rate_limit_id}", "rl-" + ids.model}, {"{registry_id}", "model_" + random_base62(24)}};
  for (const auto& [k, v] : subs) {
    for (size_t at; (at = p.find(k)) != std::string::npos;) p.replace(at, k.size(), v);
  }
  if (p.starts_with("/v1/organization/usage/")) p += "?start_time=1700000000";  // required
  if (p.find('{') != std::string::npos) {
    ADD_FAILURE() << "security_test.cpp: no value for a placeholder in " << r.path << "; add it to Ids and fill()";
  }
  return p;
}

// Routes whose {id}s are made up in this fixture (no such object can exist yet): 404 when allowed.
bool made_up_object(const Route& r) {
  std::string p = r.path;
  return p.find("{exec_id}") != std::string::npos || p.starts_with("/v1/deployments/") || p.starts_with("/v1/models/");
}

// The error code of a 404 on the route: OpenAI's model_not_found for models, else not_found.
std::string not_found_code(const Route& r) {
  return std::string(r.path).starts_with("/v1/models/") ? "model_not_found" : "not_found";
}

bool has_params(const Route& r) { return std::string(r.path).find('{') != std::string::npos; }
bool is_get(const Route& r) { return std::string(r.method) == "GET"; }

// A request body that passes parsing (not validation) for any route: the checks under test come
// before the handler reads fields.
json body_for(const Route& r) { return is_get(r) || std::string(r.method) == "DELETE" ? json(nullptr) : json::object(); }

// ---------------------------------------------------------------------------------------------
// Assertions on responses.

// The OpenAI error shape: {"error": {"message": str, "type": str, "param": str|null, "code": str|null}}.
::testing::AssertionResult is_error(const http::ClientResponse& r, unsigned status, const std::string& type = "",
                                    const std::string& code = "") {
  if (r.status != status) {
    return ::testing::AssertionFailure() << "want HTTP " << status << ", got " << r.status << ": " << r.body;
  }
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_object() || j.size() != 1 || !j.contains("error") || !j["error"].is_object()) {
    return ::testing::AssertionFailure() << "not an OpenAI error body: " << r.body;
  }
  const json& e = j["error"];
  if (!e.contains("message") || !e["message"].is_string() || e["message"].get<std::string>().empty() ||
      !e.contains("type") || !e["type"].is_string() || !e.contains("param") ||
      !(e["param"].is_null() || e["param"].is_string()) || !e.contains("code") ||
      !(e["code"].is_null() || e["code"].is_string())) {
    return ::testing::AssertionFailure() << "error body lacks message/type/param/code: " << r.body;
  }
  if (!type.empty() && e["type"] != type) {
    return ::testing::AssertionFailure() << "want error type " << type << ": " << r.body;
  }
  if (!code.empty() && e["code"] != code) {
    return ::testing::AssertionFailure() << "want error code " << code << ": " << r.body;
  }
  return ::testing::AssertionSuccess();
}

// A made-up id shaped like a real one ("proj_" + 24 characters).
std::string fake_like(const std::string& id) {
  size_t cut = id.find_first_of("_-");
  if (cut == std::string::npos || cut > 5) return "no-such-thing";
  return id.substr(0, cut + 1) + random_base62(id.size() - cut - 1);
}

// ---------------------------------------------------------------------------------------------
// A server with two organizations (A and B), users of every role in A, a node, and the ids of
// one object of each kind in A.

struct Session {
  std::string token;
  std::string user_id;
};

Session login(http::Client& c, const std::string& email, const std::string& password) {
  Api anon{c, "", ""};
  json s = anon.post("/v1/auth/login", {{"email", email}, {"password", password}});
  return {s["token"], s["user"]["id"]};
}

class Security : public ::testing::Test {
 protected:
  void SetUp() override {
    srv = std::make_unique<ServerProcess>();
    c = srv->client();
    a = make_tenant(*c, srv->admin_key(), "alpha");
    b = make_tenant(*c, srv->admin_key(), "beta");
    Api op{*c, srv->admin_key(), a.org_id};
    ids.org = a.org_id;
    ids.project = a.project_id;
    ids.project_key = op.get("/v1/organization/projects/" + a.project_id + "/api_keys")["data"][0]["id"];
    ids.admin_key = op.get("/v1/organization/admin_api_keys")["data"][0]["id"];
    json users = op.get("/v1/organization/users");
    ids.user = users["data"][0]["id"];
    a_owner = login(*c, a.owner_email, a.owner_password);
    b_owner = login(*c, b.owner_email, b.owner_password);
    add_node();
    add_workloads();
  }

  // Users of each smaller role in A, logged in.
  void add_role_users() {
    Api admin{*c, a.admin_key, ""};
    for (const char* role : {"viewer", "billing", "member", "admin"}) {
      std::string email = std::string("alpha-") + role + "@example.com";
      admin.post("/v1/organization/users", {{"email", email}, {"role", role}, {"password", "correct horse battery"}},
                 201);
      role_sessions[role] = login(*c, email, "correct horse battery");
    }
  }

  // A region, a zone, a join token and a joined node (with its own credential).
  void add_node() {
    Api op{*c, srv->admin_key(), ""};
    op.post("/admin/v1/regions", {{"id", "eu-west-1"}, {"jurisdiction", "EU"}}, 201);
    op.post("/admin/v1/zones", {{"id", "eu-west-1a"}, {"region", "eu-west-1"}}, 201);
    json jt = op.post("/admin/v1/join_tokens", {{"region", "eu-west-1"}, {"max_uses", 2}}, 201);
    ids.region = "eu-west-1";
    ids.zone = "eu-west-1a";
    ids.token = jt["id"];
    Api anon{*c, "", ""};
    json gpus = json::array();
    for (int i = 0; i < 4; ++i) gpus.push_back({{"index", i}, {"model", "H100-80GB"}, {"memory_mb", 81920}});
    json joined = anon.post("/agent/v1/join", {{"join_token", jt["token"]}, {"name", "node-1"}, {"gpus", gpus}}, 201);
    ids.node = joined["node"]["id"];
    node_key = joined["node_key"];
    // An external endpoint (nothing connects to it until a request uses it).
    ids.endpoint = op.post("/admin/v1/endpoints", {{"model", "partner-model"}, {"url", "http://127.0.0.1:9"},
                                                   {"region", "eu-west-1"}}, 201)["id"];
  }

  // One workload of each kind in A's project.
  void add_workloads() {
    Api k{*c, a.project_key, ""};
    json base = {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}};
    json instance = base, job = base, service = base;
    job["command"] = {"true"};
    service["command"] = {"sleep", "1"};
    service["port"] = 8000;
    ids.instance = k.post("/v1/compute/instances", instance, 201)["id"];
    ids.job = k.post("/v1/compute/jobs", job, 201)["id"];
    ids.service = k.post("/v1/compute/services", service, 201)["id"];
    ids.assignment = "asg_" + random_base62(24);  // none of A's: the node's own are tested by the agent's tests
    ids.exec = "exec_" + random_base62(24);       // A's instance is not running: no exec can exist
    int64_t now = int64_t(time(nullptr));
    ids.reservation = k.post("/v1/compute/reservations", {{"region", "eu-west-1"}, {"gpu_type", "H100-80GB"}, {"gpus", 2},
                                                          {"start_time", now}, {"end_time", now + 86400}}, 201)["id"];
    ids.quota = "quota_" + random_base62(24);
  }

  // key, with OpenAI-Organization: org and OpenAI-Project: project when given.
  http::ClientResponse call(const std::string& key, const Route& r, const Ids& with, const std::string& org = "",
                            const std::string& project = "") {
    Api api{*c, key, org};
    std::vector<std::pair<std::string, std::string>> h;
    if (!project.empty()) h.emplace_back("OpenAI-Project", project);
    return api.call(r.method, fill(r, with), body_for(r), h);
  }

  std::unique_ptr<ServerProcess> srv;
  std::unique_ptr<http::Client> c;
  Tenant a, b;
  Ids ids;
  Session a_owner, b_owner;
  std::map<std::string, Session> role_sessions;
  std::string node_key;
};

// ---------------------------------------------------------------------------------------------

// The server lists every route it serves in /metrics (aicloud_http_route_info); the table must
// name exactly those, so that a new route cannot skip these tests.
TEST(SecurityRouteTable, MatchesTheServersRoutes) {
  ServerProcess srv;
  auto c = srv.client();
  auto res = c->request("GET", "/metrics");
  ASSERT_EQ(res.status, 200u);
  static const std::regex info_re(R"re(aicloud_http_route_info\{route="([^"]*)",method="([^"]*)"\} 1)re");
  std::set<std::string> served;
  for (auto it = std::sregex_iterator(res.body.begin(), res.body.end(), info_re); it != std::sregex_iterator(); ++it) {
    served.insert((*it)[2].str() + " " + (*it)[1].str());
  }
  ASSERT_FALSE(served.empty()) << "no aicloud_http_route_info in /metrics:\n" << res.body;
  std::set<std::string> table;
  for (const auto& r : kRoutes) EXPECT_TRUE(table.insert(route_name(r)).second) << "duplicate row " << route_name(r);
  for (const auto& r : served) {
    EXPECT_TRUE(table.count(r)) << "the server serves " << r << " but kRoutes in tests/security_test.cpp has no row "
                                << "for it: add one with its access class, so that its authentication is tested";
  }
  for (const auto& r : table) EXPECT_TRUE(served.count(r)) << "kRoutes names " << r << ", which the server does not serve";
}

// No credential: 401 with the OpenAI error shape on every route but the public ones. /metrics
// then shows each row of the table as a matched route, so no row is a typo that the router
// answers 404 to.
TEST_F(Security, NoKeyIs401OnEveryNonPublicRoute) {
  for (const auto& r : kRoutes) {
    SCOPED_TRACE(route_name(r));
    auto res = call("", r, ids);
    if (r.access == Acc::kPublic) {
      EXPECT_EQ(res.status, r.anon) << res.body;
    } else {
      EXPECT_TRUE(is_error(res, 401, "authentication_error", "missing_api_key"));
    }
  }
  std::string metrics = c->request("GET", "/metrics").body;
  for (const auto& r : kRoutes) {
    std::string label = std::string("route=\"") + r.path + "\",method=\"" + r.method + "\",status=\"" +
                        std::to_string(r.anon) + "\"";
    EXPECT_NE(metrics.find(label), std::string::npos) << "the server did not route " << route_name(r);
  }
}

TEST_F(Security, MalformedOrUnknownKeyIs401) {
  const std::string root = srv->admin_key();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"Authorization", "Bearer"},
      {"Authorization", "Bearer    "},
      {"Authorization", "Basic dXNlcjpwYXNzd29yZA=="},
      {"Authorization", "Token " + a.admin_key},                    // a good key under another scheme
      {"Authorization", a.admin_key},                               // no scheme at all
      {"Authorization", "Bearer sk-proj-short"},                    // too short for its kind
      {"Authorization", "Bearer sk-nope-" + random_base62(48)},     // no such kind
      {"Authorization", "Bearer sk-admin-" + random_base62(48)},    // well formed, unknown
      {"Authorization", "Bearer sk-proj-" + random_base62(48)},
      {"Authorization", "Bearer sess-" + random_base62(48)},
      {"Authorization", "Bearer sk-node-" + random_base62(48)},
      {"Authorization", "Bearer sk-root-" + random_base62(48)},     // not the operator's key
      {"Authorization", "Bearer " + root + "x"},                    // the operator's key, one character more
      {"Authorization", "Bearer " + root.substr(0, root.size() - 1)},  // ... one less
      {"Authorization", "Bearer " + a.admin_key.substr(0, a.admin_key.size() - 1) + "\xff"},  // a high byte
      {"Authorization", "Bearer sk-admin-" + std::string(4000, 'A')},  // too long for its kind
  };
  for (const auto& r : kRoutes) {
    if (r.access == Acc::kPublic) continue;
    for (const auto& h : bad) {
      SCOPED_TRACE(route_name(r) + " with Authorization: " + h.second.substr(0, 40));
      auto res = c->request(r.method, fill(r, ids), body_for(r).is_null() ? "" : "{}", {h});
      EXPECT_TRUE(is_error(res, 401, "authentication_error")) << res.body;
      EXPECT_EQ(res.body.find(a.admin_key), std::string::npos) << "a 401 must not echo the key: " << res.body;
      EXPECT_EQ(res.body.find(root), std::string::npos) << "a 401 must not echo the key: " << res.body;
    }
  }
}

// Another organization's credentials on A's object ids: 404 with the very answer that a made-up
// id gets, and nothing of A's changed afterwards.
TEST_F(Security, OtherOrganizationsObjectsAre404AndDoNotLeak) {
  Api op{*c, srv->admin_key(), b.org_id};
  std::string b_project_key =
      op.get("/v1/organization/projects/" + b.project_id + "/api_keys")["data"][0]["id"];
  std::string a_project_name = Api{*c, a.admin_key, ""}.get("/v1/organization/projects/" + a.project_id)["name"];

  struct Who {
    std::string name, key, org_header;
    unsigned role;
  };
  const std::vector<Who> who = {
      {"B's admin key", b.admin_key, "", kAdmin},
      {"B's owner session", b_owner.token, "", kOwner},
      {"B's owner session naming B", b_owner.token, b.org_id, kOwner},
      {"the operator acting in B", srv->admin_key(), b.org_id, kOwner},
  };
  Ids fake = ids;
  fake.org = fake_like(ids.org);
  fake.project = fake_like(ids.project);
  fake.project_key = fake_like(ids.project_key);
  fake.admin_key = fake_like(ids.admin_key);
  fake.user = fake_like(ids.user);
  const std::vector<std::pair<std::string, std::string>> real_fake = {
      {ids.org, fake.org}, {ids.project, fake.project}, {ids.project_key, fake.project_key},
      {ids.admin_key, fake.admin_key}, {ids.user, fake.user}};
  auto normalize = [&](std::string body, bool real) {
    for (size_t i = 0; i < real_fake.size(); ++i) {
      body = replace_all(body, real ? real_fake[i].first : real_fake[i].second, "<id" + std::to_string(i) + ">");
    }
    json j = json::parse(body, nullptr, false);
    return j;
  };

  int checked = 0;
  for (const auto& w : who) {
    for (const auto& r : kRoutes) {
      if (r.access != Acc::kOrg || !has_params(r)) continue;
      SCOPED_TRACE(w.name + ": " + route_name(r));
      auto res = call(w.key, r, ids, w.org_header);
      unsigned want = (r.roles & w.role) ? 404 : 403;  // a role that may not use the route at all: 403 either way
      EXPECT_TRUE(is_error(res, want)) << res.body;
      for (const std::string& secret : {a_project_name, a.owner_email, a.org_id, a.admin_key, a.project_key}) {
        EXPECT_EQ(res.body.find(secret), std::string::npos) << "the answer reveals '" << secret << "': " << res.body;
      }
      auto made_up = call(w.key, r, fake, w.org_header);
      EXPECT_EQ(made_up.status, res.status);
      EXPECT_EQ(normalize(res.body, true), normalize(made_up.body, false))
          << "A's real id and a made-up one must get the same answer";
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);

  // B's credentials naming A in OpenAI-Organization: 404 on every org route.
  for (const auto& r : kRoutes) {
    if (r.access != Acc::kOrg) continue;
    for (const std::string& key : {b.admin_key, b_owner.token, b.project_key}) {
      SCOPED_TRACE(route_name(r));
      EXPECT_TRUE(is_error(call(key, r, ids, a.org_id), 404, "invalid_request_error", "not_found"));
    }
  }

  // The compute API (acting in a project): B's principals, and a key of another project of A,
  // on A's workloads get 404, the same answer as for made-up ids.
  Api a_admin_api{*c, a.admin_key, ""};
  std::string a2 = a_admin_api.post("/v1/organization/projects", {{"name", "alpha two"}}, 201)["id"];
  std::string a2_key = a_admin_api.post("/v1/organization/projects/" + a2 + "/api_keys", json::object(), 201)["value"];
  struct ProjectWho {
    std::string name, key, org_header, project_header;
  };
  const std::vector<ProjectWho> pwho = {
      {"B's project key", b.project_key, "", ""},
      {"B's project key naming A's project", b.project_key, "", a.project_id},
      {"B's admin key naming B's project", b.admin_key, "", b.project_id},
      {"B's owner naming B's project", b_owner.token, "", b.project_id},
      {"the operator in B naming B's project", srv->admin_key(), b.org_id, b.project_id},
      {"the key of A's other project", a2_key, "", ""},
      {"A's owner naming A's other project", a_owner.token, "", a2},
  };
  Ids wfake = ids;
  wfake.instance = fake_like(ids.instance);
  wfake.job = fake_like(ids.job);
  wfake.service = fake_like(ids.service);
  wfake.reservation = fake_like(ids.reservation);
  int project_checked = 0;
  for (const auto& w : pwho) {
    for (const auto& r : kRoutes) {
      if (r.access != Acc::kProject) continue;
      if (org_owned(r) && w.name.find("A's other project") != std::string::npos) continue;
      SCOPED_TRACE(w.name + ": " + route_name(r));
      if (!has_params(r)) {
        if (!is_get(r)) continue;
        auto list = call(w.key, r, ids, w.org_header, w.project_header);
        EXPECT_EQ(list.status, 200u) << list.body;
        for (const std::string& id : {ids.instance, ids.job, ids.service, ids.reservation}) {
          EXPECT_EQ(list.body.find(id), std::string::npos) << "lists A's workload " << id << ": " << list.body;
        }
        continue;
      }
      auto res = call(w.key, r, ids, w.org_header, w.project_header);
      EXPECT_TRUE(is_error(res, 404, "invalid_request_error", not_found_code(r)));
      auto made_up = call(w.key, r, wfake, w.org_header, w.project_header);
      EXPECT_EQ(made_up.status, res.status);
      made_up.body = replace_all(replace_all(replace_all(made_up.body, wfake.instance, ids.instance), wfake.job, ids.job),
                                 wfake.service, ids.service);
      made_up.body = replace_all(made_up.body, wfake.reservation, ids.reservation);
      EXPECT_EQ(made_up.body, res.body) << "A's real id and a made-up one must get the same answer";
      ++project_checked;
    }
  }
  EXPECT_GT(project_checked, 50);
  // B's users and the operator in B cannot name A's project at all.
  for (const auto& r : kRoutes) {
    if (r.access != Acc::kProject) continue;
    SCOPED_TRACE(route_name(r));
    EXPECT_TRUE(is_error(call(b.admin_key, r, ids, "", a.project_id), 404, "invalid_request_error", "not_found"));
    EXPECT_TRUE(is_error(call(b_owner.token, r, ids, "", a.project_id), 404, "invalid_request_error", "not_found"));
    EXPECT_TRUE(is_error(call(srv->admin_key(), r, ids, b.org_id, a.project_id), 404, "invalid_request_error", "not_found"));
  }
  // A's workloads were neither stopped nor cancelled.
  Api a_key{*c, a.project_key, ""};
  for (const std::string& path : {"/v1/compute/instances/" + ids.instance, "/v1/compute/jobs/" + ids.job,
                                  "/v1/compute/services/" + ids.service}) {
    json wl = a_key.get(path);
    std::string phase = wl["status"]["phase"];
    EXPECT_TRUE(phase != "stopped" && phase != "stopping" && phase != "cancelled" && phase != "cancelling")
        << path << ": " << wl.dump();
  }

  // One of B's own projects with one of A's keys: still 404.
  Api b_owner_api{*c, b_owner.token, ""};
  EXPECT_TRUE(is_error(b_owner_api.call("GET", "/v1/organization/projects/" + b.project_id + "/api_keys/" + ids.project_key),
                       404, "invalid_request_error", "not_found"));
  EXPECT_TRUE(is_error(b_owner_api.call("DELETE", "/v1/organization/projects/" + b.project_id + "/api_keys/" + ids.project_key),
                       404, "invalid_request_error", "not_found"));
  EXPECT_TRUE(is_error(Api{*c, a_owner.token, ""}.call("GET", "/v1/organization/projects/" + a.project_id + "/api_keys/" + b_project_key),
                       404, "invalid_request_error", "not_found"));

  // Nothing of A's changed: its project, keys and owner are as they were.
  Api a_admin{*c, a.admin_key, ""};
  json p = a_admin.get("/v1/organization/projects/" + a.project_id);
  EXPECT_EQ(p["name"], a_project_name);
  EXPECT_EQ(p["status"], "active");
  EXPECT_EQ(Api({*c, a.project_key, ""}).call("GET", "/v1/me").status, 200u);
  a_admin.get("/v1/organization/projects/" + a.project_id + "/api_keys/" + ids.project_key);
  json owner = a_admin.get("/v1/organization/users/" + ids.user);
  EXPECT_EQ(owner["role"], "owner");
  Api{*c, srv->admin_key(), a.org_id}.get("/v1/organization/admin_api_keys/" + ids.admin_key);
  // ... and A's audit log shows none of B's attempts.
  json log = Api{*c, srv->admin_key(), a.org_id}.get("/v1/organization/audit_logs?limit=100");
  for (const auto& e : log["data"]) {
    EXPECT_NE(e["actor"]["id"], b_owner.user_id) << e.dump();
    EXPECT_NE(e["organization_id"], b.org_id) << e.dump();
  }
}

// Each role of A on every org and project route: 403 where its role does not reach, 200 on the
// reads it may do. Project keys and node credentials never reach the organization API.
TEST_F(Security, TooSmallRoleIs403OnEveryOrgRoute) {
  add_role_users();
  struct Who {
    std::string name, key;
    unsigned role;
  };
  std::vector<Who> who = {{"viewer", role_sessions["viewer"].token, kViewer},
                          {"billing", role_sessions["billing"].token, kBilling},
                          {"member", role_sessions["member"].token, kMember},
                          {"admin", role_sessions["admin"].token, kAdmin},
                          {"admin key", a.admin_key, kAdmin},
                          {"owner", a_owner.token, kOwner}};
  for (const auto& w : who) {
    for (const auto& r : kRoutes) {
      if (r.access != Acc::kOrg) continue;
      SCOPED_TRACE(w.name + ": " + route_name(r));
      if (!(r.roles & w.role)) {
        EXPECT_TRUE(is_error(call(w.key, r, ids), 403, "permission_error", "insufficient_permissions"));
      } else if (is_get(r)) {  // (allowed mutations are not run: they would change the fixture)
        auto res = call(w.key, r, ids);
        EXPECT_EQ(res.status, 200u) << res.body;
      }
    }
  }
  for (const auto& r : kRoutes) {
    if (r.access != Acc::kOrg) continue;
    SCOPED_TRACE(route_name(r));
    EXPECT_TRUE(is_error(call(a.project_key, r, ids), 403, "permission_error", "insufficient_scope"));
    EXPECT_TRUE(is_error(call(node_key, r, ids), 403, "permission_error", "agent_only"));
    // The operator must say which organization it acts in.
    EXPECT_TRUE(is_error(call(srv->admin_key(), r, ids), 400, "invalid_request_error", "missing_organization"));
  }
  // The compute API: a member or more may act in a project it names; the project's own key may.
  for (const auto& w : who) {
    for (const auto& r : kRoutes) {
      if (r.access != Acc::kProject) continue;
      SCOPED_TRACE(w.name + " naming A's project: " + route_name(r));
      if (!(r.roles & w.role)) {
        EXPECT_TRUE(is_error(call(w.key, r, ids, "", a.project_id), 403, "permission_error", "insufficient_permissions"));
      } else if (is_get(r)) {
        auto res = call(w.key, r, ids, "", a.project_id);
        EXPECT_EQ(res.status, made_up_object(r) ? 404u : 200u) << res.body;
      }
      // Without naming a project, no user or admin key acts in one.
      EXPECT_TRUE(is_error(call(w.key, r, ids), 403, "permission_error", "project_required"));
    }
  }
  for (const auto& r : kRoutes) {
    if (r.access != Acc::kProject) continue;
    SCOPED_TRACE(route_name(r));
    if (is_get(r)) {
      auto res = call(a.project_key, r, ids);
      EXPECT_EQ(res.status, made_up_object(r) ? 404u : 200u) << res.body;
    }
    EXPECT_TRUE(is_error(call(node_key, r, ids), 403, "permission_error", "agent_only"));
    EXPECT_TRUE(is_error(call(srv->admin_key(), r, ids, "", a.project_id), 400, "invalid_request_error",
                         "missing_organization"));
  }
  // A viewer changed nothing: the project keeps its name and key, the owner is still owner.
  Api admin{*c, a.admin_key, ""};
  EXPECT_EQ(admin.get("/v1/organization/projects/" + a.project_id)["status"], "active");
  EXPECT_EQ(admin.get("/v1/organization/users/" + ids.user)["role"], "owner");
  EXPECT_EQ(Api({*c, a.project_key, ""}).call("GET", "/v1/me").status, 200u);
}

// /admin/v1 is the operator's alone and /agent/v1/heartbeat the nodes' alone; the refusal does
// not depend on whether the object named exists.
TEST_F(Security, OperatorAndAgentRoutesRefuseEveryoneElse) {
  Ids fake = ids;
  fake.org = fake_like(ids.org);
  fake.region = "no-such-region";
  fake.zone = "no-such-zone";
  fake.token = fake_like(ids.token);
  fake.node = fake_like(ids.node);
  fake.endpoint = fake_like(ids.endpoint);
  const std::vector<std::pair<std::string, std::string>> who = {{"A's admin key", a.admin_key},
                                                                {"A's project key", a.project_key},
                                                                {"A's owner session", a_owner.token},
                                                                {"a node", node_key}};
  for (const auto& r : kRoutes) {
    if (r.access != Acc::kOperator) continue;
    for (const auto& [name, key] : who) {
      SCOPED_TRACE(name + ": " + route_name(r));
      auto res = call(key, r, ids);
      EXPECT_TRUE(is_error(res, 403, "permission_error", "operator_only"));
      auto made_up = call(key, r, fake);
      EXPECT_EQ(made_up.body, res.body);
    }
    if (is_get(r)) {
      EXPECT_EQ(call(srv->admin_key(), r, ids).status, 200u) << route_name(r);
    }
  }
  for (const auto& r : kRoutes) {
    if (r.access != Acc::kNode) continue;
    for (const auto& [name, key] : std::vector<std::pair<std::string, std::string>>{
             {"operator", srv->admin_key()}, {"admin key", a.admin_key}, {"project key", a.project_key},
             {"owner session", a_owner.token}}) {
      SCOPED_TRACE(name + ": " + route_name(r));
      EXPECT_TRUE(is_error(call(key, r, ids), 403, "permission_error", "agent_only"));
    }
    auto res = call(node_key, r, ids);
    if (has_params(r)) {
      // Not this node's assignment (nor anyone's): refused, never a crash or a 500.
      EXPECT_TRUE(res.status == 400 || res.status == 404) << res.status << " " << res.body;
    } else {
      EXPECT_EQ(res.status, 200u) << res.body;
    }
  }
  // Routes for any credential accept every kind.
  for (const std::string& key : {srv->admin_key(), a.admin_key, a.project_key, a_owner.token, node_key}) {
    EXPECT_EQ(Api({*c, key, ""}).call("GET", "/v1/me").status, 200u);
  }
}

// A deleted key fails on its very next request, on the same keep-alive connection and on
// another one, although it was cached a moment before.
TEST_F(Security, DeletedKeyIs401OnItsNextRequest) {
  Api admin{*c, a.admin_key, ""};
  json k = admin.post("/v1/organization/projects/" + a.project_id + "/api_keys", {{"name", "doomed"}}, 201);
  std::string key = k["value"];
  auto other = srv->client();
  Api user{*other, key, ""};
  for (int i = 0; i < 3; ++i) ASSERT_EQ(user.call("GET", "/v1/me").status, 200u);  // cached now
  admin.del("/v1/organization/projects/" + a.project_id + "/api_keys/" + k["id"].get<std::string>());
  EXPECT_TRUE(is_error(user.call("GET", "/v1/me"), 401, "authentication_error", "invalid_api_key"));
  EXPECT_TRUE(is_error(Api({*c, key, ""}).call("GET", "/v1/me"), 401, "authentication_error", "invalid_api_key"));
  EXPECT_TRUE(is_error(admin.call("DELETE", "/v1/organization/projects/" + a.project_id + "/api_keys/" +
                                                k["id"].get<std::string>()),
                       404, "invalid_request_error", "not_found"));

  // An admin key, deleted by the owner while in use.
  Api owner{*c, a_owner.token, ""};
  json ak = owner.post("/v1/organization/admin_api_keys", {{"name", "doomed admin"}}, 201);
  Api doomed{*other, ak["value"], ""};
  ASSERT_EQ(doomed.call("GET", "/v1/organization/projects").status, 200u);
  owner.del("/v1/organization/admin_api_keys/" + ak["id"].get<std::string>());
  EXPECT_TRUE(is_error(doomed.call("GET", "/v1/organization/projects"), 401, "authentication_error"));
  EXPECT_TRUE(is_error(doomed.call("POST", "/v1/organization/projects", {{"name", "ghost"}}), 401));
  // The other keys are untouched.
  EXPECT_EQ(admin.call("GET", "/v1/organization/projects").status, 200u);
  EXPECT_EQ(Api({*c, a.project_key, ""}).call("GET", "/v1/me").status, 200u);
}

// A role change or a removal takes effect on the user's very next request.
TEST_F(Security, RoleChangeAndRemovalApplyAtOnce) {
  add_role_users();
  Api admin_user{*c, role_sessions["admin"].token, ""};
  admin_user.post("/v1/organization/projects", {{"name", "made by admin"}}, 201);
  Api owner{*c, a_owner.token, ""};
  owner.post("/v1/organization/users/" + role_sessions["admin"].user_id, {{"role", "viewer"}});
  EXPECT_TRUE(is_error(admin_user.call("POST", "/v1/organization/projects", {{"name", "no longer"}}), 403,
                       "permission_error", "insufficient_permissions"));
  EXPECT_EQ(admin_user.call("GET", "/v1/organization/projects").status, 200u);  // still a viewer

  owner.del("/v1/organization/users/" + role_sessions["admin"].user_id);
  auto res = admin_user.call("GET", "/v1/organization/projects");
  EXPECT_TRUE(res.status == 400 || res.status == 403 || res.status == 404) << res.status << " " << res.body;
  Api naming_a{*c, role_sessions["admin"].token, a.org_id};
  EXPECT_TRUE(is_error(naming_a.call("GET", "/v1/organization/projects"), 404, "invalid_request_error", "not_found"));
  // A member may not make itself more.
  Api member{*c, role_sessions["member"].token, ""};
  EXPECT_TRUE(is_error(member.call("POST", "/v1/organization/users/" + role_sessions["member"].user_id, {{"role", "owner"}}),
                       403));
  // An admin may not make anyone owner, nor demote the owner.
  Api admin_key{*c, a.admin_key, ""};
  EXPECT_TRUE(is_error(admin_key.call("POST", "/v1/organization/users/" + role_sessions["member"].user_id, {{"role", "owner"}}), 403));
  EXPECT_TRUE(is_error(admin_key.call("POST", "/v1/organization/users/" + a_owner.user_id, {{"role", "viewer"}}), 403));
  EXPECT_EQ(owner.get("/v1/organization/users/" + a_owner.user_id)["role"], "owner");
}

TEST_F(Security, SuspendedOrganizationIs403UntilUnsuspended) {
  Api op{*c, srv->admin_key(), ""};
  Api a_admin{*c, a.admin_key, ""}, a_proj{*c, a.project_key, ""}, a_sess{*c, a_owner.token, ""};
  Api b_admin{*c, b.admin_key, ""}, b_proj{*c, b.project_key, ""};
  // Cached before the suspension.
  ASSERT_EQ(a_admin.call("GET", "/v1/organization/projects").status, 200u);
  ASSERT_EQ(a_proj.call("GET", "/v1/me").status, 200u);
  ASSERT_EQ(a_sess.call("GET", "/v1/organization/projects").status, 200u);

  json org = op.post("/admin/v1/organizations/" + a.org_id + "/suspend", {{"reason", "unpaid invoices"}});
  EXPECT_EQ(org["status"], "suspended");
  for (Api* api : {&a_admin, &a_proj, &a_sess}) {
    EXPECT_TRUE(is_error(api->call("GET", "/v1/me"), 403, "permission_error", "organization_suspended"));
    EXPECT_TRUE(is_error(api->call("GET", "/v1/organization/projects"), 403, "permission_error", "organization_suspended"));
    EXPECT_TRUE(is_error(api->call("POST", "/v1/organization/projects", {{"name", "while suspended"}}), 403,
                         "permission_error", "organization_suspended"));
  }
  // Logging in works (the person exists) but the session is as suspended as the organization.
  Session fresh = login(*c, a.owner_email, a.owner_password);
  EXPECT_TRUE(is_error(Api({*c, fresh.token, ""}).call("GET", "/v1/organization/projects"), 403, "permission_error",
                       "organization_suspended"));
  // Another organization is untouched.
  EXPECT_EQ(b_admin.call("GET", "/v1/organization/projects").status, 200u);
  EXPECT_EQ(b_proj.call("GET", "/v1/me").status, 200u);

  op.post("/admin/v1/organizations/" + a.org_id + "/unsuspend", json::object());
  EXPECT_EQ(a_admin.call("GET", "/v1/organization/projects").status, 200u);
  EXPECT_EQ(a_proj.call("GET", "/v1/me").status, 200u);
  EXPECT_EQ(a_sess.call("GET", "/v1/organization/projects").status, 200u);
  EXPECT_EQ(Api({*c, fresh.token, ""}).call("GET", "/v1/organization/projects").status, 200u);
  // Nothing was created while suspended.
  json list = a_admin.get("/v1/organization/projects?limit=100");
  for (const auto& p : list["data"]) EXPECT_NE(p["name"], "while suspended");
}

TEST_F(Security, ArchivedProjectsKeysAre403) {
  Api admin{*c, a.admin_key, ""};
  json p = admin.post("/v1/organization/projects", {{"name", "short-lived"}}, 201);
  std::string pid = p["id"];
  std::string key = admin.post("/v1/organization/projects/" + pid + "/api_keys", {{"name", "k"}}, 201)["value"];
  Api k{*c, key, ""};
  ASSERT_EQ(k.call("GET", "/v1/me").status, 200u);  // cached

  admin.post("/v1/organization/projects/" + pid + "/archive", json::object());
  EXPECT_TRUE(is_error(k.call("GET", "/v1/me"), 403, "permission_error", "project_archived"));
  EXPECT_TRUE(is_error(admin.call("POST", "/v1/organization/projects/" + pid + "/api_keys", {{"name", "k2"}}), 400,
                       "invalid_request_error", "project_archived"));
  // The organization's other project and its key are unaffected.
  EXPECT_EQ(Api({*c, a.project_key, ""}).call("GET", "/v1/me").status, 200u);
  EXPECT_EQ(admin.get("/v1/organization/projects/" + pid)["status"], "archived");
}

TEST_F(Security, LogoutInvalidatesTheSession) {
  Session s1 = login(*c, a.owner_email, a.owner_password);
  Session s2 = login(*c, a.owner_email, a.owner_password);
  ASSERT_NE(s1.token, s2.token);
  Api one{*c, s1.token, ""}, two{*c, s2.token, ""};
  ASSERT_EQ(one.call("GET", "/v1/me").status, 200u);
  ASSERT_EQ(two.call("GET", "/v1/me").status, 200u);
  one.post("/v1/auth/logout", json::object());
  EXPECT_TRUE(is_error(one.call("GET", "/v1/me"), 401, "authentication_error"));
  EXPECT_TRUE(is_error(one.call("GET", "/v1/organization/projects"), 401, "authentication_error"));
  EXPECT_TRUE(is_error(one.call("POST", "/v1/auth/logout", json::object()), 401, "authentication_error"));
  EXPECT_EQ(two.call("GET", "/v1/me").status, 200u);  // only that session ended
  // API keys are revoked, not logged out.
  EXPECT_TRUE(is_error(Api({*c, a.admin_key, ""}).call("POST", "/v1/auth/logout", json::object()), 400,
                       "invalid_request_error", "not_a_session"));
  // A wrong password is a 401 that does not say whether the email exists.
  Api anon{*c, "", ""};
  auto wrong = anon.call("POST", "/v1/auth/login", {{"email", a.owner_email}, {"password", "wrong password!"}});
  auto nobody = anon.call("POST", "/v1/auth/login", {{"email", "nobody@example.com"}, {"password", "wrong password!"}});
  EXPECT_TRUE(is_error(wrong, 401, "authentication_error", "invalid_credentials"));
  EXPECT_TRUE(is_error(nobody, 401, "authentication_error", "invalid_credentials"));
  EXPECT_EQ(json::parse(wrong.body)["error"]["message"], json::parse(nobody.body)["error"]["message"]);
}

// ---------------------------------------------------------------------------------------------
// The audit chain against tampering with the database file.

void sql(const std::string& db_path, const std::string& statement) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << msg << " in " << statement;
}

std::string sql_text(const std::string& db_path, const std::string& query) {
  sqlite3* db = nullptr;
  sqlite3_stmt* st = nullptr;
  std::string out;
  if (sqlite3_open(db_path.c_str(), &db) == SQLITE_OK && sqlite3_prepare_v2(db, query.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    out = p ? p : "";
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

AuditVerifyResult verify_store(const std::string& data_dir) {
  auto store = open_sqlite_store({(fs::path(data_dir) / "aicloud.db").string(), true});
  return store->read([](Tx& tx) { return audit_verify(tx); });
}

// `aicloud audit verify --data-dir DIR`: exit status and output.
std::pair<int, std::string> cli_verify(const std::string& data_dir) {
  std::string cmd = aicloud_binary() + " audit verify --data-dir '" + data_dir + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

class SecurityAudit : public ::testing::Test {
 protected:
  void SetUp() override {
    srv = std::make_unique<ServerProcess>();
    auto c = srv->client();
    Tenant t = make_tenant(*c, srv->admin_key(), "audited");
    Api admin{*c, t.admin_key, ""};
    for (int i = 0; i < 6; ++i) admin.post("/v1/organization/projects", {{"name", "p" + std::to_string(i)}}, 201);
    admin.call("POST", "/v1/organization/projects", {{"name", ""}});  // a failed attempt is audited too
    json v = Api{*c, srv->admin_key(), ""}.get("/admin/v1/audit_logs/verify");
    ASSERT_EQ(v["ok"], true) << v.dump();
    records = v["records"];
    ASSERT_GE(records, 8);
    ASSERT_EQ(srv->stop_graceful(), 0);
    db = (fs::path(srv->data_dir()) / "aicloud.db").string();
    auto cli = cli_verify(srv->data_dir());
    cli_ready = cli.first == 0;
    if (!cli_ready) std::cout << "[ note ] `aicloud audit verify` is not available yet (" << cli.second.substr(0, 200)
                              << "); checking audit_verify() and the API only\n";
    middle = records / 2;
  }

  // The chain is broken at `seq`, by every way of asking.
  void expect_broken_at(int64_t seq, const std::string& reason_has) {
    AuditVerifyResult r = verify_store(srv->data_dir());
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.first_broken_seq, seq) << r.reason;
    EXPECT_NE(r.reason.find(reason_has), std::string::npos) << r.reason;
    if (cli_ready) {
      auto [rc, out] = cli_verify(srv->data_dir());
      EXPECT_NE(rc, 0) << out;
      EXPECT_NE(out.find(std::to_string(seq)), std::string::npos) << out;
    }
    srv->start();
    auto c = srv->client();
    json v = Api{*c, srv->admin_key(), ""}.get("/admin/v1/audit_logs/verify");
    EXPECT_EQ(v["ok"], false) << v.dump();
    EXPECT_EQ(v["first_broken_seq"], seq) << v.dump();
    EXPECT_NE(v["reason"].get<std::string>().find(reason_has), std::string::npos) << v.dump();
    ASSERT_EQ(srv->stop_graceful(), 0);
  }

  void expect_intact() {
    AuditVerifyResult r = verify_store(srv->data_dir());
    EXPECT_TRUE(r.ok) << r.first_broken_seq << ": " << r.reason;
    EXPECT_EQ(r.records, records);
  }

  std::string row(const std::string& col) {
    return sql_text(db, "SELECT " + col + " FROM audit_log WHERE seq=" + std::to_string(middle));
  }

  std::unique_ptr<ServerProcess> srv;
  std::string db;
  int64_t records = 0, middle = 0;
  bool cli_ready = false;
};

std::string quote(const std::string& s) { return "'" + replace_all(s, "'", "''") + "'"; }

// Editing any field of one record breaks the chain at that record; putting it back heals it.
TEST_F(SecurityAudit, EditedRecordIsFound) {
  expect_intact();
  const std::vector<std::pair<std::string, std::string>> edits = {
      {"resource_id", "'proj_innocent'"},
      {"actor_id", "'someone-else'"},
      {"outcome", "'error:500'"},
      {"action", "'project.viewed'"},
      {"ts_ms", "ts_ms + 1"},
      {"org_id", "''"},
      {"details", "'{\"name\":\"forged\"}'"},
      {"details", "'not json at all'"},
  };
  for (const auto& [col, value] : edits) {
    SCOPED_TRACE(col + " = " + value);
    std::string original = row(col);
    bool numeric = col == "ts_ms";
    sql(db, "UPDATE audit_log SET " + col + "=" + value + " WHERE seq=" + std::to_string(middle));
    ASSERT_NE(row(col), original);
    expect_broken_at(middle, "edited");
    sql(db, "UPDATE audit_log SET " + col + "=" + (numeric ? original : quote(original)) +
                " WHERE seq=" + std::to_string(middle));
    expect_intact();
  }
}

// Re-hashing the edited record (as a forger with the code would) moves the break to the next one.
TEST_F(SecurityAudit, RehashedRecordBreaksTheNextLink) {
  sql(db, "UPDATE audit_log SET resource_id='proj_innocent' WHERE seq=" + std::to_string(middle));
  AuditRecord r;
  r.ts_ms = std::stoll(row("ts_ms"));
  r.org_id = row("org_id");
  r.actor_type = row("actor_type");
  r.actor_id = row("actor_id");
  r.action = row("action");
  r.resource_id = row("resource_id");
  r.request_id = row("request_id");
  r.outcome = row("outcome");
  r.details = json::parse(row("details"));
  std::string forged = audit_hash(r, row("prev_hash"));
  sql(db, "UPDATE audit_log SET hash='" + forged + "' WHERE seq=" + std::to_string(middle));
  expect_broken_at(middle + 1, "prev_hash");
}

TEST_F(SecurityAudit, DeletedRecordIsFound) {
  sql(db, "DELETE FROM audit_log WHERE seq=" + std::to_string(middle));
  // The record after the gap is the first that no longer verifies; the reason names the gap.
  expect_broken_at(middle + 1, "record " + std::to_string(middle) + " is missing");
}

TEST_F(SecurityAudit, DeletedAndRenumberedRecordIsFound) {
  sql(db, "DELETE FROM audit_log WHERE seq=" + std::to_string(middle) +
              "; UPDATE audit_log SET seq=seq-1 WHERE seq>" + std::to_string(middle));
  expect_broken_at(middle, "prev_hash");
}

}  // namespace
