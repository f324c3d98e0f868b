#include "api/context.h"

#include "util/error.h"

namespace aicloud {

const std::string& Context::org_id() const {
  const Principal& p = who();
  if (p.org_id.empty()) {
    if (p.is_operator()) {
      throw ApiError(400, "invalid_request_error",
                     "The operator key acts in an organization only when the request names one in the "
                     "OpenAI-Organization header.",
                     "missing_organization", "OpenAI-Organization");
    }
    throw ApiError(400, "invalid_request_error",
                   "You belong to several organizations (or none): name one in the OpenAI-Organization header.",
                   "missing_organization", "OpenAI-Organization");
  }
  return p.org_id;
}

void Context::require(Perm p) const {
  const Principal& w = who();
  if (w.type == PrincipalType::kProjectKey) {
    throw forbidden("Project API keys cannot use the organization admin API; use an admin key (sk-admin-...) or log in.",
                    "insufficient_scope");
  }
  if (!role_allows(w.role, p)) {
    throw forbidden("Your role in this organization (" + std::string(role_name(w.role)) +
                    ") does not allow this action.");
  }
}

Object Context::owned(std::string_view kind, std::string_view id, std::string_view what) const {
  auto o = tx->get(kind, id);
  if (!o || o->org_id != org_id()) throw not_found(std::string(what), std::string(id));
  return *o;
}

ListQuery list_query(const Context& c, std::string kind) {
  ListQuery q;
  q.kind = std::move(kind);
  if (c.target.has("limit")) {
    auto s = c.target.get("limit");
    int v = 0;
    bool ok = !s.empty() && s.size() <= 4 && s.find_first_not_of("0123456789") == std::string_view::npos;
    if (ok) v = std::stoi(std::string(s));
    if (!ok || v < 1 || v > 100) throw invalid_field("limit", "'limit' must be an integer between 1 and 100.");
    q.limit = v;
  }
  q.after = std::string(c.target.get("after"));
  return q;
}

json list_json(const Page& p, const std::function<json(const Object&)>& to_json) {
  json data = json::array();
  for (const auto& o : p.items) data.push_back(to_json(o));
  return {{"object", "list"},
          {"data", std::move(data)},  // moved: a copy here was a deep copy of the whole page
          {"first_id", p.items.empty() ? json(nullptr) : json(p.items.front().id)},
          {"last_id", p.items.empty() ? json(nullptr) : json(p.items.back().id)},
          {"has_more", p.has_more}};
}

}  // namespace aicloud
