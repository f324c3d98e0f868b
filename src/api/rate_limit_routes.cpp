// A project's model rate limits, in the shape of OpenAI's project rate limits API:
//
//   GET  /v1/organization/projects/{project_id}/rate_limits                   (any role)
//   POST /v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}   (owner, admin)
//
// One object per model the organization may use (registry models and external endpoints; "rl-<model>"): the model's defaults
// (gateway/ratelimit.h) until an update stores the project's own values. Besides OpenAI's
// max_requests_per_1_minute and max_tokens_per_1_minute, an object carries
// max_requests_per_1_minute_per_key and max_tokens_per_1_minute_per_key: each API key of the
// project gets its own buckets of that size (0 = no per-key limit, only the project's).
// The gateway reads these from memory (RateLimiter reloads on the store's write generation), so
// an update takes effect within RateLimiter::kRefreshMs.
#include <algorithm>
#include <map>

#include "api/app.h"
#include "gateway/endpoints.h"
#include "gateway/ratelimit.h"
#include "models/registry.h"
#include "util/error.h"
#include "util/ids.h"

namespace aicloud {

using gateway::RateLimits;

namespace {

// model -> limits: every model the organization may use, then the project's stored ones.
std::map<std::string, RateLimits> project_limits(Tx& tx, const std::string& org_id, const std::string& project_id) {
  std::map<std::string, RateLimits> out;
  RateLimits defaults = gateway::default_rate_limits(read_settings(tx));
  for (const auto& m : models::models_visible_to(tx, org_id)) out.emplace(m.name, defaults);
  for (const auto& e : gateway::endpoint_models_visible_to(tx, org_id)) out.emplace(e.name, defaults);
  ListQuery q;
  q.kind = gateway::kRateLimitKind;
  q.org_id = org_id;
  q.project_id = project_id;
  for (const auto& o : tx.all(q)) out[o.data.value("model", "")] = gateway::rate_limits_from(o.data, defaults);
  out.erase("");
  return out;
}

}  // namespace

void add_rate_limit_routes(App& app) {
  app.add({"GET", "/v1/organization/projects/{project_id}/rate_limits", Access::kOrg, false, "", [](Context& c) {
             c.require(Perm::kOrgRead);
             Object p = c.owned("project", c.param("project_id"), "project");
             ListQuery q = list_query(c, gateway::kRateLimitKind);
             auto all = project_limits(*c.tx, c.org_id(), p.id);
             json data = json::array();
             bool has_more = false, started = q.after.empty();
             for (const auto& [model, l] : all) {
               if (!started) {
                 started = "rl-" + model == q.after;
                 continue;
               }
               if (data.size() == size_t(q.limit)) {
                 has_more = true;
                 break;
               }
               data.push_back(gateway::rate_limit_json(model, l));
             }
             json first = data.empty() ? json(nullptr) : data.front()["id"];
             json last = data.empty() ? json(nullptr) : data.back()["id"];
             return json{{"object", "list"}, {"data", std::move(data)}, {"first_id", first}, {"last_id", last},
                         {"has_more", has_more}};
           }});

  app.add({"POST", "/v1/organization/projects/{project_id}/rate_limits/{rate_limit_id}", Access::kOrg, true,
           "project.rate_limit.updated", [](Context& c) {
             c.require(Perm::kProjectsWrite);
             Object p = c.owned("project", c.param("project_id"), "project");
             std::string id(c.param("rate_limit_id"));
             std::string model = id.starts_with("rl-") ? id.substr(3) : "";
             auto all = project_limits(*c.tx, c.org_id(), p.id);
             auto it = all.find(model);
             if (model.empty() || it == all.end()) throw not_found("rate limit", id);
             BodyReader b(c.body);
             constexpr int64_t kMax = gateway::kMaxLimit;
             auto rpm = b.opt_int("max_requests_per_1_minute", 0, kMax);
             auto tpm = b.opt_int("max_tokens_per_1_minute", 0, kMax);
             auto rpm_key = b.opt_int("max_requests_per_1_minute_per_key", 0, kMax);
             auto tpm_key = b.opt_int("max_tokens_per_1_minute_per_key", 0, kMax);
             b.done();
             RateLimits l = it->second;
             if (rpm) l.requests_per_minute = *rpm;
             if (tpm) l.tokens_per_minute = *tpm;
             if (rpm_key) l.requests_per_minute_per_key = *rpm_key;
             if (tpm_key) l.tokens_per_minute_per_key = *tpm_key;
             json j = gateway::rate_limit_json(model, l);
             json stored = j;
             stored.erase("object");
             stored.erase("id");
             std::string lookup = gateway::rate_limit_lookup(p.id, model);
             if (auto o = c.tx->find(gateway::kRateLimitKind, lookup)) {
               o->data = stored;
               c.tx->update(*o);
             } else {
               Object n;
               n.kind = gateway::kRateLimitKind;
               n.id = new_id("rl_");
               n.org_id = c.org_id();
               n.project_id = p.id;
               n.lookup = lookup;
               n.data = stored;
               c.tx->insert(n);
             }
             c.audit_resource = id;
             c.audit_details = {{"project_id", p.id}, {"model", model}, {"limits", stored}};
             return j;
           }});
}

}  // namespace aicloud
