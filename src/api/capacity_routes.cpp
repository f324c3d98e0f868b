// The provider's inventory (operator API under /admin/v1): regions with their jurisdiction,
// zones with a power budget, capacity providers, join tokens, nodes (cordon, uncordon, drain);
// and the agent API under /agent/v1: join with a token, then heartbeat with a node credential.
#include <regex>

#include "api/app.h"
#include "api/objects.h"
#include "capacity/leases.h"
#include "identity/crypto.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"

namespace aicloud {

namespace {

// Region, zone, node and NVLink-domain names: lower-case DNS labels ("eu-west-1", "eu-west-1a").
std::string slug(BodyReader& b, const char* field, bool required = true) {
  auto v = required ? std::optional(b.str(field, 1, 63)) : b.opt_str(field, 1, 63);
  if (!v) return "";
  static const std::regex re("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$");
  if (!std::regex_match(*v, re)) {
    throw invalid_field(field, std::string("'") + field +
                                   "' must be lower-case letters, digits and dashes, such as 'eu-west-1'.");
  }
  return *v;
}

std::string gpu_model(const std::string& field, const std::string& v) {
  static const std::regex re("^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$");
  if (!std::regex_match(v, re)) throw invalid_field(field, "'" + field + "' must be a GPU model such as 'H100-80GB'.");
  return v;
}

Object by_name(Tx& tx, const char* kind, const std::string& name, const char* what) {
  auto o = tx.find(kind, name);
  if (!o) throw not_found(what, name);
  return *o;
}

json region_json(const Object& o) {
  return {{"object", "region"}, {"id", o.lookup}, {"name", o.data.value("name", o.lookup)},
          {"jurisdiction", o.data.value("jurisdiction", "")}, {"created_at", o.created_at}};
}

json zone_json(const Object& o) {
  return {{"object", "zone"}, {"id", o.lookup}, {"region", o.data.value("region", "")},
          {"name", o.data.value("name", o.lookup)}, {"power_budget_kw", o.data.value("power_budget_kw", int64_t(0))},
          {"created_at", o.created_at}};
}

json provider_json(const Object& o) {
  json j = o.data;
  j["object"] = "capacity_provider";
  j["id"] = o.id;
  j["created_at"] = o.created_at;
  return j;
}

json join_token_json(const Object& o) {
  int64_t exp = o.data.value("expires_at", int64_t(0));
  std::string status = o.data.value("revoked", false) ? "revoked"
                       : exp <= now_unix()            ? "expired"
                       : (o.data.value("max_uses", 1) > 0 && o.data.value("uses", 0) >= o.data.value("max_uses", 1))
                           ? "used"
                           : "active";
  return {{"object", "join_token"}, {"id", o.id}, {"description", o.data.value("description", "")},
          {"region", o.data["region"]}, {"zone", o.data["zone"]}, {"max_uses", o.data["max_uses"]},
          {"uses", o.data["uses"]}, {"expires_at", exp}, {"status", status},
          {"redacted_value", o.data.value("redacted_value", "")}, {"created_at", o.created_at}};
}

json node_json(const Object& o, const NodeLeases& leases) {
  json j = o.data;
  j["object"] = "node";
  j["id"] = o.id;
  j["created_at"] = o.created_at;
  int64_t now = now_ms();
  std::string admin_state = o.data.value("admin_state", "schedulable");  // schedulable|cordoned|draining
  bool alive = leases.alive(o.id, now);
  j["state"] = !alive ? "not-ready" : admin_state == "schedulable" ? "ready" : admin_state;
  int64_t seen = leases.last_seen_ms(o.id);
  j["last_heartbeat_at"] = seen ? json(seen / 1000) : json(nullptr);
  j["gpu_count"] = o.data.value("gpus", json::array()).size();
  return j;
}

}  // namespace

void add_capacity_routes(App& app, NodeLeases& leases) {
  // Regions.
  app.add({"GET", "/admin/v1/regions", Access::kOperator, false, "", [](Context& c) {
             return list_json(c.tx->list(list_query(c, "region")), region_json);
           }});
  app.add({"POST", "/admin/v1/regions", Access::kOperator, true, "region.created", [](Context& c) {
             BodyReader b(c.body);
             std::string id = slug(b, "id");
             std::string name = b.opt_str("name", 1, 128).value_or(id);
             std::string jur = b.str("jurisdiction", 2, 8);
             b.done();
             static const std::regex re("^[A-Z]{2,8}$");
             if (!std::regex_match(jur, re)) {
               throw invalid_field("jurisdiction", "'jurisdiction' must be an upper-case code such as EU, US, JP or IN.");
             }
             Object o;
             o.kind = "region";
             o.id = new_id("rgn_");
             o.lookup = id;
             o.data = {{"name", name}, {"jurisdiction", jur}};
             try {
               c.tx->insert(o);
             } catch (const StoreConflict&) {
               throw conflict("Region '" + id + "' already exists.", "region_exists");
             }
             c.audit_resource = id;
             c.status = 201;
             return region_json(o);
           }});
  app.add({"GET", "/admin/v1/regions/{region_id}", Access::kOperator, false, "", [](Context& c) {
             return region_json(by_name(*c.tx, "region", std::string(c.param("region_id")), "region"));
           }});

  // Zones (data centres) with their power budget.
  app.add({"GET", "/admin/v1/zones", Access::kOperator, false, "", [](Context& c) {
             ListQuery q = list_query(c, "zone");
             if (c.target.has("region")) q.parent_id = std::string(c.target.get("region"));
             return list_json(c.tx->list(q), zone_json);
           }});
  app.add({"POST", "/admin/v1/zones", Access::kOperator, true, "zone.created", [](Context& c) {
             BodyReader b(c.body);
             std::string id = slug(b, "id");
             std::string region = slug(b, "region");
             std::string name = b.opt_str("name", 1, 128).value_or(id);
             int64_t kw = b.opt_int("power_budget_kw", 0, 10'000'000).value_or(0);
             b.done();
             if (!c.tx->find("region", region)) throw invalid_field("region", "No such region: '" + region + "'.");
             Object o;
             o.kind = "zone";
             o.id = new_id("zone_");
             o.lookup = id;
             o.parent_id = region;
             o.data = {{"region", region}, {"name", name}, {"power_budget_kw", kw}};
             try {
               c.tx->insert(o);
             } catch (const StoreConflict&) {
               throw conflict("Zone '" + id + "' already exists.", "zone_exists");
             }
             c.audit_resource = id;
             c.status = 201;
             return zone_json(o);
           }});
  app.add({"GET", "/admin/v1/zones/{zone_id}", Access::kOperator, false, "", [](Context& c) {
             return zone_json(by_name(*c.tx, "zone", std::string(c.param("zone_id")), "zone"));
           }});
  app.add({"POST", "/admin/v1/zones/{zone_id}", Access::kOperator, true, "zone.updated", [](Context& c) {
             Object z = by_name(*c.tx, "zone", std::string(c.param("zone_id")), "zone");
             BodyReader b(c.body);
             auto kw = b.opt_int("power_budget_kw", 0, 10'000'000);
             auto name = b.opt_str("name", 1, 128);
             b.done();
             if (kw) z.data["power_budget_kw"] = *kw;
             if (name) z.data["name"] = *name;
             c.tx->update(z);
             c.audit_resource = z.lookup;
             return zone_json(z);
           }});

  // Capacity providers: owned, or leased from an upstream cloud at a cost per GPU-hour.
  app.add({"GET", "/admin/v1/capacity_providers", Access::kOperator, false, "", [](Context& c) {
             return list_json(c.tx->list(list_query(c, "capacity_provider")), provider_json);
           }});
  app.add({"POST", "/admin/v1/capacity_providers", Access::kOperator, true, "capacity_provider.created",
           [](Context& c) {
             BodyReader b(c.body);
             std::string name = b.str("name", 1, 128);
             std::string type = b.opt_enum("type", {"owned", "leased"}).value_or("owned");
             auto cost = b.opt_int("cost_per_gpu_hour_micros", 0, int64_t(1) << 40);
             auto start = b.opt_int("term_start", 0, int64_t(1) << 40);
             auto end = b.opt_int("term_end", 0, int64_t(1) << 40);
             std::string upstream = b.opt_str("upstream", 0, 128).value_or("");
             b.done();
             if (type == "leased" && !cost) {
               throw invalid_field("cost_per_gpu_hour_micros", "A leased provider needs 'cost_per_gpu_hour_micros'.");
             }
             if (start && end && *end <= *start) throw invalid_field("term_end", "'term_end' must be after 'term_start'.");
             Object o;
             o.kind = "capacity_provider";
             o.id = new_id("cp_");
             o.data = {{"name", name}, {"type", type}, {"upstream", upstream},
                       {"cost_per_gpu_hour_micros", cost ? json(*cost) : json(nullptr)},
                       {"term_start", start ? json(*start) : json(nullptr)},
                       {"term_end", end ? json(*end) : json(nullptr)}};
             c.tx->insert(o);
             c.audit_resource = o.id;
             c.status = 201;
             return provider_json(o);
           }});

  // Join tokens: expiring, single- or multi-use, revocable. The secret is shown once.
  app.add({"GET", "/admin/v1/join_tokens", Access::kOperator, false, "", [](Context& c) {
             return list_json(c.tx->list(list_query(c, "join_token")), join_token_json);
           }});
  app.add({"POST", "/admin/v1/join_tokens", Access::kOperator, true, "join_token.created", [](Context& c) {
             BodyReader b(c.body);
             std::string region = slug(b, "region", false);
             std::string zone = slug(b, "zone", false);
             int64_t max_uses = b.opt_int("max_uses", 0, 1'000'000).value_or(1);
             int64_t ttl = b.opt_int("expires_in_seconds", 60, 30 * 86400).value_or(86400);
             std::string desc = b.opt_str("description", 0, 256).value_or("");
             b.done();
             if (!region.empty() && !c.tx->find("region", region)) {
               throw invalid_field("region", "No such region: '" + region + "'.");
             }
             if (!zone.empty()) {
               auto z = c.tx->find("zone", zone);
               if (!z) throw invalid_field("zone", "No such zone: '" + zone + "'.");
               if (!region.empty() && z->parent_id != region) {
                 throw invalid_field("zone", "Zone '" + zone + "' is not in region '" + region + "'.");
               }
               region = z->parent_id;
             }
             std::string secret = "ajt-" + random_base62(40);
             Object o;
             o.kind = "join_token";
             o.id = new_id("jt_");
             o.lookup = sha256_hex(secret);
             o.data = {{"region", region.empty() ? json(nullptr) : json(region)},
                       {"zone", zone.empty() ? json(nullptr) : json(zone)},
                       {"max_uses", max_uses}, {"uses", 0}, {"expires_at", now_unix() + ttl},
                       {"description", desc}, {"revoked", false}, {"redacted_value", redact_secret(secret)}};
             c.tx->insert(o);
             json j = join_token_json(o);
             j["token"] = secret;  // shown once
             c.audit_resource = o.id;
             c.status = 201;
             return j;
           }});
  app.add({"DELETE", "/admin/v1/join_tokens/{token_id}", Access::kOperator, true, "join_token.revoked",
           [](Context& c) {
             auto o = c.tx->get("join_token", c.param("token_id"));
             if (!o) throw not_found("join token", std::string(c.param("token_id")));
             o->data["revoked"] = true;
             c.tx->update(*o);
             c.audit_resource = o->id;
             return join_token_json(*o);
           }});

  // Nodes.
  app.add({"GET", "/admin/v1/nodes", Access::kOperator, false, "", [&leases](Context& c) {
             ListQuery q = list_query(c, "node");
             if (c.target.has("region")) q.parent_id = std::string(c.target.get("region"));
             return list_json(c.tx->list(q), [&](const Object& o) { return node_json(o, leases); });
           }});
  app.add({"GET", "/admin/v1/nodes/{node_id}", Access::kOperator, false, "", [&leases](Context& c) {
             auto o = c.tx->get("node", c.param("node_id"));
             if (!o) throw not_found("node", std::string(c.param("node_id")));
             return node_json(*o, leases);
           }});
  auto set_admin_state = [&leases](const char* state) {
    return [&leases, state](Context& c) {
      auto o = c.tx->get("node", c.param("node_id"));
      if (!o) throw not_found("node", std::string(c.param("node_id")));
      BodyReader(c.body).done();
      o->data["admin_state"] = state;
      c.tx->update(*o);
      c.audit_resource = o->id;
      return node_json(*o, leases);
    };
  };
  app.add({"POST", "/admin/v1/nodes/{node_id}/cordon", Access::kOperator, true, "node.cordoned",
           set_admin_state("cordoned")});
  app.add({"POST", "/admin/v1/nodes/{node_id}/uncordon", Access::kOperator, true, "node.uncordoned",
           set_admin_state("schedulable")});
  app.add({"POST", "/admin/v1/nodes/{node_id}/drain", Access::kOperator, true, "node.draining",
           set_admin_state("draining")});

  // The agent API. Join is authenticated by the join token in the body; it returns the node's
  // own credential, after which the join token is no longer needed.
  app.add({"POST", "/agent/v1/join", Access::kPublic, true, "node.joined", [&leases](Context& c) {
             BodyReader b(c.body);
             std::string token = b.str("join_token", 1, 256);
             std::string name = slug(b, "name");
             std::string region = slug(b, "region", false);
             std::string zone = slug(b, "zone", false);
             std::string domain = slug(b, "nvlink_domain", false);
             int64_t cpus = b.opt_int("cpu_cores", 1, 1'000'000).value_or(1);
             int64_t mem = b.opt_int("memory_bytes", 0, int64_t(1) << 60).value_or(0);
             std::string version = b.opt_str("agent_version", 0, 64).value_or("");
             std::string address = b.opt_str("address", 0, 255).value_or("");
             const json* gpus_in = b.opt_array("gpus");  // [{index, model, memory_mb, uuid}]
             const json* labels_in = b.opt_object("labels");
             b.done();

             auto jt = c.tx->find("join_token", sha256_hex(token));
             auto now = now_unix();
             if (!jt || jt->data.value("revoked", false) || jt->data.value("expires_at", int64_t(0)) <= now ||
                 (jt->data.value("max_uses", 1) > 0 && jt->data.value("uses", 0) >= jt->data.value("max_uses", 1))) {
               throw unauthorized("The join token is invalid, expired, revoked or used up; ask the operator for a new one.",
                                  "invalid_join_token");
             }
             std::string jt_region = jt->data["region"].is_string() ? jt->data["region"].get<std::string>() : "";
             std::string jt_zone = jt->data["zone"].is_string() ? jt->data["zone"].get<std::string>() : "";
             if (region.empty()) region = jt_region;
             if (zone.empty()) zone = jt_zone;
             if (!jt_region.empty() && region != jt_region) {
               throw invalid_field("region", "This join token is for region '" + jt_region + "'.");
             }
             if (!jt_zone.empty() && zone != jt_zone) throw invalid_field("zone", "This join token is for zone '" + jt_zone + "'.");
             if (region.empty()) throw invalid_field("region", "'region' is required (the join token names none).");
             if (!c.tx->find("region", region)) throw invalid_field("region", "No such region: '" + region + "'.");
             if (!zone.empty()) {
               auto z = c.tx->find("zone", zone);
               if (!z || z->parent_id != region) throw invalid_field("zone", "No such zone in region '" + region + "': '" + zone + "'.");
             }
             json gpus = json::array();
             std::string gpu_type;
             if (gpus_in) {
               if (gpus_in->size() > 64) throw invalid_field("gpus", "A node has at most 64 GPUs.");
               for (size_t i = 0; i < gpus_in->size(); ++i) {
                 const json& g = (*gpus_in)[i];
                 std::string f = "gpus[" + std::to_string(i) + "]";
                 if (!g.is_object()) throw invalid_field(f, "'" + f + "' must be an object.");
                 BodyReader gb(g);
                 std::string model = gpu_model(f + ".model", gb.str("model", 1, 32));
                 int64_t mem_mb = gb.opt_int("memory_mb", 0, 10'000'000).value_or(0);
                 std::string uuid = gb.opt_str("uuid", 0, 96).value_or("");
                 int64_t index = gb.opt_int("index", 0, 63).value_or(int64_t(i));
                 gb.done();
                 if (!gpu_type.empty() && gpu_type != model) {
                   throw invalid_field(f + ".model", "All GPUs of a node must be of one model.");
                 }
                 gpu_type = model;
                 gpus.push_back({{"index", index}, {"model", model}, {"memory_mb", mem_mb}, {"uuid", uuid}});
               }
             }
             json labels = json::object();
             if (labels_in) {
               for (auto it = labels_in->begin(); it != labels_in->end(); ++it) {
                 if (!it->is_string() || it.key().size() > 63 || it->get_ref<const std::string&>().size() > 63) {
                   throw invalid_field("labels", "'labels' must map short names to short strings.");
                 }
                 labels[it.key()] = *it;
               }
             }
             Object node;
             node.kind = "node";
             node.id = new_id("node_");
             node.lookup = name;
             node.parent_id = region;
             node.data = {{"name", name}, {"region", region}, {"zone", zone.empty() ? json(nullptr) : json(zone)},
                          {"nvlink_domain", domain.empty() ? json(nullptr) : json(domain)},
                          {"cpu_cores", cpus}, {"memory_bytes", mem}, {"gpus", gpus},
                          {"gpu_type", gpu_type.empty() ? json(nullptr) : json(gpu_type)},
                          {"labels", labels}, {"taints", json::array()}, {"admin_state", "schedulable"},
                          {"agent_version", version}, {"join_token_id", jt->id},
                          {"address", address.empty() ? name : address}};
             try {
               c.tx->insert(node);
             } catch (const StoreConflict&) {
               throw conflict("A node named '" + name + "' has already joined; an agent that lost its credential "
                              "must be removed by the operator first.", "node_exists");
             }
             jt->data["uses"] = jt->data.value("uses", 0) + 1;
             c.tx->update(*jt);
             std::string secret = make_secret(kNodeToken);
             Object cred;
             cred.kind = std::string(kNodeToken.store_kind);
             cred.id = new_id("nkey_");
             cred.parent_id = node.id;
             cred.lookup = sha256_hex(secret);
             c.tx->insert(cred);
             leases.renew(node.id, now_ms());
             c.audit_resource = node.id;
             c.audit_details = {{"name", name}, {"region", region}, {"gpus", gpus.size()}};
             c.status = 201;
             json j = node_json(node, leases);
             return json{{"object", "node.joined"}, {"node", j}, {"node_key", secret},
                         {"heartbeat_interval_ms", leases.interval_ms()}};
           }});

  // Heartbeats renew the in-memory lease only; they are not audited and write nothing.
  app.add({"POST", "/agent/v1/heartbeat", Access::kNode, false, "", [&leases](Context& c) {
             auto node = c.tx->get("node", c.who().node_id);
             if (!node) throw not_found("node", c.who().node_id);
             leases.renew(node->id, now_ms());
             json j = node_json(*node, leases);
             return json{{"object", "node.heartbeat"}, {"state", j["state"]},
                         {"heartbeat_interval_ms", leases.interval_ms()}};
           }});
}

}  // namespace aicloud
