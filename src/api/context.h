// What a route handler gets: the request, its principal, its transaction, and what it tells
// the pipeline back (status, audit action, whether identity caches must be dropped).
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "http/router.h"
#include "http/types.h"
#include "identity/auth.h"
#include "store/store.h"
#include "util/json_util.h"

namespace aicloud {

class App;

// Who may call a route. The pipeline authenticates before the handler runs.
enum class Access {
  kPublic,    // no credential (health, login, signup)
  kAny,       // any valid credential
  kOperator,  // the operator's root key only
  kOrg,       // a credential acting in an organization (users, admin keys, operator naming one)
  kNode,      // a node agent's credential only
  kProject,   // a project key, or an organization member naming a project in OpenAI-Project
};

struct Context {
  Context(App& a, http::Request& r, const http::Target& t, const http::RouteMatch& m, const std::string& id)
      : app(a), req(r), target(t), match(m), request_id(id) {}

  App& app;
  http::Request& req;
  const http::Target& target;
  const http::RouteMatch& match;
  const std::string& request_id;  // the App's, for the whole request
  std::optional<Principal> principal;
  Tx* tx = nullptr;   // write transaction for mutations, read transaction otherwise
  json body;          // parsed JSON body (mutations)

  // Filled in by the handler.
  unsigned status = 200;
  std::string audit_action;       // e.g. "project.created"; empty = derived from the route
  std::string audit_resource;     // the object acted on
  std::string audit_org;          // defaults to the principal's organization
  json audit_details;  // null until a route adds to it (json::object() would allocate for every request)
  bool invalidate_auth = false;   // identity objects changed: drop the auth cache after commit
  std::vector<std::pair<std::string, std::string>> headers;  // extra response headers
  std::optional<std::string> raw_body;  // a non-JSON response body (e.g. /metrics)
  std::string content_type;  // of the response; empty: application/json (http::Response)

  std::string_view param(std::string_view name) const { return match.param(name); }
  const Principal& who() const { return *principal; }

  // The organization this request acts in; 400 if the principal has not chosen one.
  const std::string& org_id() const;
  // 403 unless the principal's role in its organization allows p.
  void require(Perm p) const;
  // An object of the caller's organization, else 404 (never 403: existence does not leak).
  Object owned(std::string_view kind, std::string_view id, std::string_view what) const;
};

// Paging parameters (?limit=&after=) validated into a ListQuery.
ListQuery list_query(const Context& c, std::string kind);
// {"object":"list","data":[...],"first_id","last_id","has_more"}
json list_json(const Page& p, const std::function<json(const Object&)>& to_json);

}  // namespace aicloud
