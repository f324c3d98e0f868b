#include "gateway/endpoints.h"

#include <stdexcept>

#include "api/app.h"
#include "http/client.h"
#include "models/registry.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"

namespace aicloud::gateway {

namespace {

json endpoint_json(const Object& o) {
  return {{"object", "endpoint"},
          {"id", o.id},
          {"model", o.data["model"]},
          {"url", o.data["url"]},
          {"region", o.data["region"]},
          {"organization_id", o.org_id.empty() ? json(nullptr) : json(o.org_id)},
          {"api_key_set", !o.data.value("api_key", std::string()).empty()},
          {"created_at", o.created_at}};
}

// "http://HOST:PORT", optionally with OpenAI's "/v1" base path (the gateway adds it itself).
std::pair<std::string, uint16_t> read_url(std::string url) {
  std::string base = url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  if (base.size() > 3 && base.compare(base.size() - 3, 3, "/v1") == 0) base.resize(base.size() - 3);
  try {
    auto [host, port] = http::parse_base_url(base);
    int p = std::stoi(port);
    if (p < 1 || p > 65535) throw std::invalid_argument("the port must be 1-65535");
    return {host, uint16_t(p)};
  } catch (const std::exception& e) {
    throw invalid_field("url", "'url' must look like http://HOST:PORT or http://HOST:PORT/v1: " + std::string(e.what()));
  }
}

Object get_endpoint(Context& c) {
  auto o = c.tx->get("endpoint", c.param("id"));
  if (!o) throw not_found("endpoint", std::string(c.param("id")));
  return *o;
}

}  // namespace

void add_endpoint_routes(App& app) {
  app.add({"POST", "/admin/v1/endpoints", Access::kOperator, true, "endpoint.created", [](Context& c) {
             BodyReader b(c.body);
             std::string model = b.str("model", 1, 128);
             std::string url = b.str("url", 1, 512);
             std::string region = b.str("region", 1, 63);
             std::string key = b.opt_str("api_key", 1, 512).value_or("");
             std::string org = b.opt_str("organization_id", 1, 64).value_or("");
             b.done();
             if (auto why = models::model_name_problem(model); !why.empty()) throw invalid_field("model", why);
             auto [host, port] = read_url(url);
             if (!c.tx->find("region", region)) throw invalid_field("region", "No such region: '" + region + "'.");
             if (!org.empty() && !c.tx->get("organization", org)) {
               throw invalid_field("organization_id", "No such organization: '" + org + "'.");
             }
             Object o;
             o.kind = "endpoint";
             o.id = new_id("ep_");
             o.org_id = org;
             o.data = {{"model", model}, {"url", url}, {"host", host}, {"port", port}, {"region", region}, {"api_key", key}};
             c.tx->insert(o);
             c.status = 201;
             c.audit_resource = o.id;
             c.audit_org = org;
             c.audit_details = {{"model", model}, {"url", url}};
             return endpoint_json(o);
           }});
  app.add({"GET", "/admin/v1/endpoints", Access::kOperator, false, "", [](Context& c) {
             return list_json(c.tx->list(list_query(c, "endpoint")), endpoint_json);
           }});
  app.add({"GET", "/admin/v1/endpoints/{id}", Access::kOperator, false, "",
           [](Context& c) { return endpoint_json(get_endpoint(c)); }});
  app.add({"DELETE", "/admin/v1/endpoints/{id}", Access::kOperator, true, "endpoint.deleted", [](Context& c) {
             Object o = get_endpoint(c);
             c.tx->remove("endpoint", o.id);  // the controller unpublishes it on its next round
             c.audit_resource = o.id;
             c.audit_org = o.org_id;
             return json{{"id", o.id}, {"object", "endpoint.deleted"}, {"deleted", true}};
           }});
}

std::vector<Deployment> endpoint_deployments(Tx& tx) {
  ListQuery q;
  q.kind = "endpoint";
  std::vector<Deployment> out;
  for (const auto& o : tx.all(q)) {
    Deployment d;
    d.id = o.id;
    d.model = o.data["model"];
    d.owner_org = o.org_id;
    Replica r;
    r.id = o.id;
    r.host = o.data["host"];
    r.port = o.data["port"].get<uint16_t>();
    r.api_key = o.data.value("api_key", std::string());
    r.region = o.data["region"];
    d.replicas.push_back(std::move(r));
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<EndpointModel> endpoint_models_visible_to(Tx& tx, const std::string& org_id) {
  ListQuery q;
  q.kind = "endpoint";
  std::vector<EndpointModel> out;
  for (const auto& o : tx.all(q)) {
    if (!o.org_id.empty() && o.org_id != org_id) continue;
    out.push_back({o.data["model"], o.org_id.empty() ? std::string(models::kSystemOwner) : o.org_id, o.created_at});
  }
  return out;
}

}  // namespace aicloud::gateway
