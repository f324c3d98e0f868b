#include "api/app.h"

#include <boost/beast/http.hpp>

#include "audit/audit.h"
#include "gateway/ratelimit.h"
#include "identity/crypto.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/time.h"

namespace aicloud {

namespace bhttp = boost::beast::http;

App::App(Store& store) : store_(store), auth_(store) {}

void App::add(RouteSpec spec) {
  router_.add(spec.method, spec.pattern);
  routes_.push_back(std::move(spec));
}

void App::finalize() {
  std::vector<std::string> names, methods;
  for (const auto& r : routes_) {
    names.push_back(r.pattern);
    methods.push_back(r.method);
  }
  metrics_ = std::make_unique<http::Metrics>(std::move(names), std::move(methods));
}

static http::Response error_response(const ApiError& e) {
  http::Response r;
  r.status = unsigned(e.status);
  r.body = dump_json(e.to_json());
  return r;
}

http::Response App::protocol_error(unsigned status, const std::string& message) {
  std::string type = status >= 500 ? "server_error" : "invalid_request_error";
  std::string code = status == 413 ? "request_too_large" : status == 431 ? "headers_too_large" : status >= 500 ? "internal_error" : "malformed_request";
  http::Response r = error_response(ApiError(int(status), type, message, code));
  r.headers.emplace_back("x-request-id", new_request_id());
  metrics_->record(-1, status, 0);
  return r;
}

// A client-supplied x-request-id is kept when it is short and plain, so that traces join up.
static std::string request_id_for(const http::Request& req) {
  if (auto found = req.field("x-request-id")) {
    std::string_view v = *found;
    bool ok = !v.empty() && v.size() <= 64;
    for (char ch : v) ok = ok && (isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.');
    if (ok) return std::string(v);
  }
  return new_request_id();
}

static std::string_view bearer_token(const http::Request& req) {
  auto found = req.field("authorization");
  if (!found) return {};
  std::string_view v = *found;
  if (v.size() > 7 && strncasecmp(v.data(), "Bearer ", 7) == 0) {
    v.remove_prefix(7);
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
    return v;
  }
  return {};
}

// "application/json", in any case, with or without parameters ("; charset=utf-8").
static bool is_json_media_type(std::string_view v) {
  std::string_view type = v.substr(0, v.find(';'));
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  constexpr std::string_view kJson = "application/json";
  return type.size() == kJson.size() && strncasecmp(type.data(), kJson.data(), kJson.size()) == 0;
}

http::Response App::handle(http::Request& req, const std::string& remote_addr) {
  int64_t t0 = now_us_monotonic();
  std::string request_id = request_id_for(req);
  http::Target target;
  http::RouteMatch match;
  std::string method(req.method());
  http::Response res;
  int route = -1;
  std::optional<Principal> principal;  // for the log line only (taken when it is written)

  if (!parse_target(req.target(), target)) {
    res = error_response(bad_request("The request target is not a valid URL path.", "invalid_path"));
  } else {
    match = router_.match(method, target.path);
    route = match.route;
    if (route < 0) {
      if (match.path_known) {
        res = error_response(ApiError(405, "invalid_request_error",
                                      "Method " + method + " is not allowed on " + target.path + " (allowed: " +
                                          match.allow + ").",
                                      "method_not_allowed"));
        res.headers.emplace_back("allow", match.allow);
      } else {
        res = error_response(ApiError(404, "invalid_request_error",
                                      "Unknown request URL: " + method + " " + target.path + ".", "unknown_url"));
      }
    } else {
      Context c{*this, req, target, match, request_id};
      res = run(c, routes_[size_t(route)]);
      if (spdlog::should_log(spdlog::level::info)) principal = std::move(c.principal);
    }
  }

  // (A response that comes later from a stream is written from the stream's own head, which
  // carries the id: the gateway's does.)
  if (!res.stream) res.headers.emplace_back("x-request-id", request_id);
  int64_t latency = now_us_monotonic() - t0;
  metrics_->record(route, res.status, latency);
  if (spdlog::should_log(spdlog::level::info)) {
    spdlog::info(R"({{"request_id":"{}","method":"{}","route":"{}","status":{},"latency_us":{},"principal":"{}","remote":"{}"}})",
                 request_id, method, route >= 0 ? routes_[size_t(route)].pattern : std::string("unmatched"),
                 res.status, latency,
                 principal ? std::string(principal_type_name(principal->type)) + ":" + principal->actor_id : "-",
                 remote_addr);
  }
  return res;
}

http::Response App::run(Context& c, const RouteSpec& spec) {
  http::Response res;
  try {
    if (spec.access != Access::kPublic) {
      std::string_view org_hint = c.req.field("openai-organization").value_or(std::string_view());
      c.principal = auth_.authenticate(bearer_token(c.req), org_hint);
      if (spec.access == Access::kOperator && !c.principal->is_operator()) {
        throw forbidden("This endpoint is for the cloud operator only.", "operator_only");
      }
      bool node = c.principal->type == PrincipalType::kNode;
      if (spec.access == Access::kNode && !node) throw forbidden("This endpoint is for node agents only.", "agent_only");
      if (node && spec.access != Access::kNode && spec.access != Access::kAny) {
        throw forbidden("Node credentials can only use the agent API (/agent/v1).", "agent_only");
      }
      if (spec.access == Access::kOrg) c.org_id();  // 400 if no organization is chosen
      if (spec.access == Access::kProject) resolve_project(c);
    }

    // JSON only: a body of another type is refused rather than guessed at, on every route that
    // reads one (login and sign-up too: a browser form may post text/plain cross-site without a
    // preflight, so accepting it would let any web page log a visitor in).
    if ((spec.mutation || spec.method == "POST") && !spec.raw && !c.req.body().empty()) {
      std::string_view v = c.req.field("content-type").value_or(std::string_view());
      if (!is_json_media_type(v)) {
        throw ApiError(415, "invalid_request_error",
                       "Unsupported Content-Type '" + std::string(v) + "': send the body as application/json.",
                       "unsupported_media_type");
      }
    }

    if (spec.before) spec.before();
    if (spec.raw) return spec.raw(c);  // checks its own body (the gateway: JSON; uploads: bytes)

    if (spec.mutation) {
      c.body = parse_json_body(c.req.body());

      std::string idem_key(c.req.field("idempotency-key").value_or(std::string_view()));
      if (idem_key.size() > 255) throw invalid_field("Idempotency-Key", "The Idempotency-Key header must be at most 255 characters.");
      std::string idem_scope = c.principal ? c.principal->actor_id : "anonymous";
      std::string req_hash =
          sha256_hex(std::string(c.req.method()) + " " + c.target.path + "\n" + std::string(c.req.body()));

      auto tx = store_.begin(true);
      c.tx = tx.get();
      if (!idem_key.empty()) {
        if (auto prev = tx->idempotency_get(idem_scope, idem_key)) {
          if (prev->request_hash != req_hash) {
            throw conflict("This Idempotency-Key was already used with a different request; use a new key.",
                           "idempotency_key_reused");
          }
          res.status = unsigned(prev->status);
          res.body = prev->body;
          res.headers.emplace_back("idempotent-replayed", "true");
          return res;
        }
      }
      json out = spec.handler(c);
      res.status = c.status;
      res.body = c.raw_body ? *c.raw_body : dump_json(out);

      AuditRecord a;
      a.ts_ms = now_ms();
      a.org_id = !c.audit_org.empty() ? c.audit_org : c.principal ? c.principal->org_id : "";
      a.actor_type = c.principal ? std::string(principal_type_name(c.principal->type)) : "anonymous";
      a.actor_id = c.principal ? c.principal->actor_id : "";
      a.action = c.audit_action.empty() ? spec.action : c.audit_action;
      a.resource_id = c.audit_resource;
      a.request_id = c.request_id;
      a.outcome = "success";
      a.details = c.audit_details.is_null() ? json::object() : c.audit_details;
      audit_append(*tx, a);
      if (!idem_key.empty()) tx->idempotency_put(idem_scope, idem_key, {req_hash, int(res.status), res.body, now_unix()});
      tx->commit();
      c.tx = nullptr;
      if (c.invalidate_auth) auth_.invalidate();
    } else {
      auto tx = store_.begin(false);
      c.tx = tx.get();
      json out = spec.handler(c);
      c.tx = nullptr;
      res.status = c.status;
      res.body = c.raw_body ? *c.raw_body : dump_json(out);
    }
    res.content_type = c.content_type;
    for (auto& h : c.headers) res.headers.push_back(h);
  } catch (const ApiError& e) {
    c.tx = nullptr;
    res = error_response(e);
    if (e.status == 405) res.headers.emplace_back("allow", c.match.allow);
    if (spec.mutation && c.principal) audit_failure(c, spec, e.status);
  } catch (const StoreConflict& e) {
    c.tx = nullptr;
    res = error_response(conflict("The object was changed by another request at the same time; retry."));
    if (spec.mutation && c.principal) audit_failure(c, spec, 409);
  } catch (const std::exception& e) {
    c.tx = nullptr;
    spdlog::error("request {} failed: {}", c.request_id, e.what());
    res = error_response(internal_error("The server had an error while processing your request (request id " +
                                        c.request_id + ")."));
  }
  return res;
}

// A project key acts in its own project. An organization's member (user, admin key, operator
// naming the org) may act in one of its projects by naming it in the OpenAI-Project header.
void App::resolve_project(Context& c) {
  Principal& p = *c.principal;
  if (p.type == PrincipalType::kProjectKey) return;
  auto hdr = c.req.field("openai-project");
  if (!hdr || hdr->empty()) {
    throw forbidden("This endpoint acts in a project: use a project API key (sk-proj-...), or name the project in "
                    "the OpenAI-Project header.",
                    "project_required");
  }
  std::string project_id(*hdr);
  const std::string& org = c.org_id();
  auto proj = store_.read([&](Tx& tx) { return tx.get("project", project_id); });
  if (!proj || proj->org_id != org) throw not_found("project", project_id);
  if (proj->data.value("status", "active") != "active") {
    throw forbidden("Project '" + project_id + "' is archived.", "project_archived");
  }
  if (!role_allows(p.role, Perm::kKeysWrite)) {
    throw forbidden("Your role in this organization (" + std::string(role_name(p.role)) +
                    ") cannot use project resources.");
  }
  p.project_id = project_id;
}

void App::audit_failure(Context& c, const RouteSpec& spec, int status) {
  try {
    store_.write([&](Tx& tx) {
      AuditRecord a;
      a.ts_ms = now_ms();
      a.org_id = c.principal->org_id;
      a.actor_type = std::string(principal_type_name(c.principal->type));
      a.actor_id = c.principal->actor_id;
      a.action = c.audit_action.empty() ? spec.action : c.audit_action;
      // Without a resource named by the handler, the innermost path parameter is the target.
      a.resource_id = !c.audit_resource.empty() ? c.audit_resource
                      : c.match.params.empty()  ? std::string()
                                                : c.match.params.back().second;
      a.request_id = c.request_id;
      a.outcome = "error:" + std::to_string(status);
      audit_append(tx, a);
    });
  } catch (const std::exception& e) {
    spdlog::error("request {}: could not record the failed attempt in the audit log: {}", c.request_id, e.what());
  }
}

json read_settings(Tx& tx) {
  json defaults = {{"signup_enabled", false},
                   {"session_ttl_seconds", 86400},
                   {"default_rate_limits", {{"max_requests_per_1_minute", gateway::kDefaultRequestsPerMinute},
                                            {"max_tokens_per_1_minute", gateway::kDefaultTokensPerMinute}}}};
  auto s = tx.get("settings", "settings");
  if (!s) return defaults;
  json out = defaults;
  out.update(s->data);
  return out;
}

}  // namespace aicloud
