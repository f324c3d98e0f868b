// The tenant's compute API (/v1/compute, acting in a project): instances, jobs and services,
// their logs, and offers; and the agent's side of workloads (/agent/v1/assignments).
// Placement is the scheduler controller's job (server/controller): a create only records the
// spec as pending; the controller places it and the agents run it.
#include <regex>

#include "api/app.h"
#include "capacity/leases.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"
#include "workloads/workloads.h"

namespace aicloud {

namespace {

struct Kind {
  const char* type;    // instance | job | service
  const char* plural;  // URL segment
  const char* prefix;  // id prefix
};
constexpr Kind kInstances{"instance", "instances", "inst_"};
constexpr Kind kJobs{"job", "jobs", "job_"};
constexpr Kind kServices{"service", "services", "svc_"};

// Fleet capacity of one GPU type in one region, for validating a request's shape up front.
struct FleetShape {
  int nodes = 0, max_per_node = 0, total = 0;
};
FleetShape fleet_shape(Tx& tx, const std::string& region, const std::string& gpu_type) {
  ListQuery q;
  q.kind = "node";
  q.parent_id = region;
  FleetShape f;
  for (const auto& n : tx.all(q)) {
    if (n.data.value("gpu_type", json()).is_string() && n.data["gpu_type"] == gpu_type) {
      int g = int(n.data.value("gpus", json::array()).size());
      ++f.nodes;
      f.max_per_node = std::max(f.max_per_node, g);
      f.total += g;
    }
  }
  return f;
}

json command_field(BodyReader& b, const json& body, bool required) {
  auto it = body.find("command");
  if (it == body.end() || it->is_null()) {
    (void)b.opt_str("command");
    if (required) {
      throw ApiError(400, "invalid_request_error", "Missing required parameter: 'command'.",
                     "missing_required_parameter", "command");
    }
    return json::array({"sleep infinity"});
  }
  if (it->is_string()) {
    std::string s = *b.opt_str("command", 1, 16384);
    return json::array({s});
  }
  const json* arr = b.opt_array("command");
  if (arr->empty() || arr->size() > 1024) throw invalid_field("command", "'command' must have 1 to 1024 arguments.");
  for (const auto& a : *arr) {
    if (!a.is_string() || a.get_ref<const std::string&>().size() > 16384) {
      throw invalid_field("command", "'command' must be a string or an array of strings.");
    }
  }
  return *arr;
}

json env_field(BodyReader& b) {
  const json* env = b.opt_object("env");
  if (!env) return json::object();
  static const std::regex key("^[A-Za-z_][A-Za-z0-9_]{0,127}$");
  if (env->size() > 256) throw invalid_field("env", "'env' may hold at most 256 variables.");
  for (auto it = env->begin(); it != env->end(); ++it) {
    if (!std::regex_match(it.key(), key)) throw invalid_field("env", "'env' has an invalid name: '" + it.key() + "'.");
    if (it.key().rfind("AICLOUD_", 0) == 0) throw invalid_field("env", "'env' names starting with AICLOUD_ are reserved.");
    if (!it->is_string()) throw invalid_field("env", "'env." + it.key() + "' must be a string.");
  }
  return *env;
}

json create_workload(Context& c, const Kind& k) {
  BodyReader b(c.body);
  std::string name = b.opt_str("name", 1, 128).value_or("");
  std::string region = b.str("region", 1, 63);
  std::string zone = b.opt_str("zone", 1, 63).value_or("");
  std::string cls = b.opt_enum("class", {"reserved", "on_demand", "spot"}).value_or("on_demand");
  int64_t priority = b.opt_int("priority", 0, 1000).value_or(0);
  int64_t nodes = 1, gpus_per_node = 0, max_retries = 0, port = 0;
  std::string health_path;
  if (k.type == kJobs.type) {
    nodes = b.opt_int("nodes", 1, 1024).value_or(1);
    gpus_per_node = b.opt_int("gpus_per_node", 1, 64).value_or(1);
    max_retries = b.opt_int("max_retries", 0, 100).value_or(0);
  } else {
    gpus_per_node = b.opt_int("gpus", 1, 64).value_or(1);
  }
  if (k.type == kServices.type) {
    port = b.opt_int("port", 1, 65535).value_or(8000);
    health_path = b.opt_str("health_path", 1, 256).value_or("/health");
    if (health_path.front() != '/') throw invalid_field("health_path", "'health_path' must start with '/'.");
  }
  std::string gpu_type = b.opt_str("gpu_type", 1, 32).value_or("");
  json command = command_field(b, c.body, k.type == kJobs.type || k.type == kServices.type);
  json env = env_field(b);
  int64_t memory_mb = b.opt_int("memory_mb", 0, int64_t(1) << 32).value_or(0);
  b.done();

  if (!c.tx->find("region", region)) throw invalid_field("region", "No such region: '" + region + "'.");
  if (!zone.empty()) {
    auto z = c.tx->find("zone", zone);
    if (!z || z->parent_id != region) throw invalid_field("zone", "No such zone in region '" + region + "': '" + zone + "'.");
  }
  if (gpus_per_node > 0) {
    std::string gp = k.type == kJobs.type ? "gpus_per_node" : "gpus";
    if (gpu_type.empty()) {
      throw ApiError(400, "invalid_request_error", "Missing required parameter: 'gpu_type' (e.g. 'H100-80GB').",
                     "missing_required_parameter", "gpu_type");
    }
    FleetShape f = fleet_shape(*c.tx, region, gpu_type);
    if (f.nodes == 0) {
      throw invalid_field("gpu_type", "No GPUs of type '" + gpu_type + "' in region '" + region + "'.");
    }
    if (gpus_per_node > f.max_per_node) {
      throw invalid_field(gp, "No node in region '" + region + "' has " + std::to_string(gpus_per_node) + " GPUs of type '" +
                                  gpu_type + "' (the largest has " + std::to_string(f.max_per_node) + ").");
    }
    if (nodes > f.nodes || nodes * gpus_per_node > f.total) {
      throw invalid_field("nodes", "The region '" + region + "' has only " + std::to_string(f.nodes) + " nodes and " +
                                       std::to_string(f.total) + " GPUs of type '" + gpu_type + "'.");
    }
  } else if (k.type == kJobs.type && nodes > 1) {
    // CPU-only gangs are allowed; nothing to check against GPU capacity.
  }

  Object w;
  w.kind = "workload";
  w.id = new_id(k.prefix);
  w.org_id = c.who().org_id;
  w.project_id = c.who().project_id;
  json spec = {{"region", region}, {"zone", zone.empty() ? json(nullptr) : json(zone)}, {"class", cls},
               {"priority", priority}, {"nodes", nodes}, {"gpus_per_node", gpus_per_node},
               {"gpu_type", gpu_type.empty() ? json(nullptr) : json(gpu_type)}, {"command", command}, {"env", env},
               {"memory_bytes", memory_mb * 1024 * 1024}, {"max_retries", max_retries}};
  if (k.type == kServices.type) {
    spec["port"] = port;
    spec["health_path"] = health_path;
  }
  w.data = {{"type", k.type}, {"name", name.empty() ? w.id : name}, {"spec", spec},
            {"status", {{"phase", "pending"}, {"reason", "waiting for the scheduler"}, {"attempts", 0}}}};
  c.tx->insert(w);
  c.audit_resource = w.id;
  c.audit_details = {{"gpus", nodes * gpus_per_node}, {"gpu_type", gpu_type}, {"region", region}, {"class", cls}};
  c.status = 201;
  return workload_json(w);
}

Object owned_workload(Context& c, const Kind& k) {
  auto w = c.tx->get("workload", c.param("id"));
  if (!w || w->project_id != c.who().project_id || w->data.value("type", "") != k.type) {
    throw not_found(k.type, std::string(c.param("id")));
  }
  return *w;
}

void add_kind_routes(App& app, const Kind& k) {
  std::string base = std::string("/v1/compute/") + k.plural;
  app.add({"POST", base, Access::kProject, true, std::string(k.type) + ".created",
           [&k](Context& c) { return create_workload(c, k); }});
  app.add({"GET", base, Access::kProject, false, "", [&k](Context& c) {
             ListQuery q = list_query(c, "workload");
             q.project_id = c.who().project_id;
             q.newest_first = true;
             // Workloads of all types share the index; filter to this type, keeping pages exact.
             Page out;
             while (true) {
               Page p = c.tx->list(q);
               for (auto& o : p.items) {
                 if (o.data.value("type", "") != k.type) continue;
                 if (out.items.size() == size_t(q.limit)) {
                   out.has_more = true;
                   return list_json(out, workload_json);
                 }
                 out.items.push_back(std::move(o));
               }
               if (!p.has_more) break;
               q.after = p.items.back().id;
             }
             return list_json(out, workload_json);
           }});
  app.add({"GET", base + "/{id}", Access::kProject, false, "",
           [&k](Context& c) { return workload_json(owned_workload(c, k)); }});

  // Cancel (jobs) and stop (instances, services): the ranks get SIGTERM, then SIGKILL.
  const char* verb = k.type == kJobs.type ? "cancel" : "stop";
  app.add({"POST", base + "/{id}/" + verb, Access::kProject, true, std::string(k.type) + "." + verb,
           [&k](Context& c) {
             Object w = owned_workload(c, k);
             BodyReader b(c.body);
             int64_t grace = b.opt_int("grace_period_seconds", 0, 3600).value_or(30);
             b.done();
             json& st = w.data["status"];
             std::string ph = st.value("phase", "pending");
             if (!workload_terminal(ph)) {
               bool placed = ph != "pending";
               std::string stopping = k.type == kJobs.type ? "cancelling" : "stopping";
               std::string stopped = k.type == kJobs.type ? "cancelled" : "stopped";
               st["phase"] = placed ? stopping : stopped;
               if (!placed) st["finished_at"] = now_unix();
               st["reason"] = "requested by " + c.who().actor_id;
               c.tx->update(w);
               if (placed) stop_assignments(*c.tx, w, grace * 1000);
               reconcile_workload(*c.tx, w);
             }
             c.audit_resource = w.id;
             return workload_json(w);
           }});

  // Logs of one rank, from the tail the agent ships (offset pages forward; poll to follow).
  app.add({"GET", base + "/{id}/logs", Access::kProject, false, "", [&k](Context& c) {
             Object w = owned_workload(c, k);
             int rank = 0;
             if (c.target.has("rank")) {
               auto s = c.target.get("rank");
               if (s.empty() || s.size() > 4 || s.find_first_not_of("0123456789") != std::string_view::npos) {
                 throw invalid_field("rank", "'rank' must be a rank number.");
               }
               rank = std::stoi(std::string(s));
             }
             int64_t offset = 0;
             if (c.target.has("offset")) {
               auto s = c.target.get("offset");
               if (s.empty() || s.size() > 15 || s.find_first_not_of("0123456789") != std::string_view::npos) {
                 throw invalid_field("offset", "'offset' must be a byte offset.");
               }
               offset = std::stoll(std::string(s));
             }
             int attempt = w.data["status"].value("attempts", 0);
             std::string text;
             int64_t total = 0;
             bool found = false;
             for (const auto& a : assignments_of(*c.tx, w)) {
               if (a.data.value("rank", -1) != rank || a.data.value("attempt", 0) != attempt) continue;
               found = true;
               if (auto log = c.tx->get("log", "log_" + a.id)) {
                 total = log->data.value("total", int64_t(0));
                 std::string kept = log->data.value("text", "");
                 int64_t start = total - int64_t(kept.size());  // the first byte still kept
                 if (offset < start) offset = start;
                 if (offset < total) text = kept.substr(size_t(offset - start));
               }
             }
             if (!found && w.data["status"].value("phase", "") != "pending") {
               throw invalid_field("rank", "This workload has no rank " + std::to_string(rank) + ".");
             }
             std::string ph = w.data["status"].value("phase", "pending");
             return json{{"object", "compute.logs"}, {"rank", rank}, {"offset", std::min(offset, total)},
                         {"next_offset", total}, {"text", text}, {"phase", ph},
                         {"done", workload_terminal(ph)}};
           }});
}

}  // namespace

void add_compute_routes(App& app, NodeLeases& leases) {
  add_kind_routes(app, kInstances);
  add_kind_routes(app, kJobs);
  add_kind_routes(app, kServices);

  // What can be launched now: free GPUs by type and region, on ready nodes.
  app.add({"GET", "/v1/compute/offers", Access::kProject, false, "", [&leases](Context& c) {
             std::map<std::pair<std::string, std::string>, std::array<int64_t, 3>> by;  // total, free, nodes
             ListQuery q;
             q.kind = "node";
             std::map<std::string, int> used;
             ListQuery aq;
             aq.kind = "assignment";
             for (const auto& a : c.tx->all(aq)) {
               if (a.data.value("phase", "") != "exited" && a.data.value("phase", "") != "lost") {
                 used[a.parent_id] += int(a.data.value("gpus", json::array()).size());
               }
             }
             int64_t now = now_ms();
             for (const auto& n : c.tx->all(q)) {
               if (!n.data["gpu_type"].is_string()) continue;
               if (!leases.alive(n.id, now) || n.data.value("admin_state", "schedulable") != "schedulable") continue;
               auto& e = by[{n.data["gpu_type"], n.parent_id}];
               int g = int(n.data["gpus"].size());
               e[0] += g;
               e[1] += std::max(0, g - used[n.id]);
               e[2] += 1;
             }
             json data = json::array();
             for (const auto& [key, v] : by) {
               for (const char* cls : {"on_demand", "spot"}) {
                 data.push_back({{"object", "compute.offer"}, {"gpu_type", key.first}, {"region", key.second},
                                 {"class", cls}, {"gpus_total", v[0]}, {"gpus_available", v[1]}, {"nodes", v[2]}});
               }
             }
             return json{{"object", "list"}, {"data", data}, {"has_more", false}};
           }});

  // Agents: their assignments (what to run, what to stop), and reports on them.
  app.add({"GET", "/agent/v1/assignments", Access::kNode, false, "", [&leases](Context& c) {
             leases.renew(c.who().node_id, now_ms());  // a poll is also a beat
             ListQuery q;
             q.kind = "assignment";
             q.parent_id = c.who().node_id;
             json data = json::array();
             for (const auto& a : c.tx->all(q)) {
               if (a.data.value("phase", "") == "exited" || a.data.value("phase", "") == "lost") continue;
               data.push_back(assignment_json(a));
             }
             return json{{"object", "list"}, {"data", data}};
           }});
  app.add({"POST", "/agent/v1/assignments/{id}/status", Access::kNode, false, "", [](Context& c) {
             BodyReader b(parse_json_body(c.req.body()));
             auto phase_in = b.opt_enum("phase", {"running", "exited", "lost"});
             if (!phase_in) {
               throw ApiError(400, "invalid_request_error", "Missing required parameter: 'phase'.",
                              "missing_required_parameter", "phase");
             }
             std::string phase = *phase_in;
             auto code = b.opt_int("exit_code", -1, 1 << 16);
             auto log = b.opt_str("log", 0, 1 << 20);
             auto log_total = b.opt_int("log_total", 0, int64_t(1) << 50);
             b.done();
             return c.app.store().write([&](Tx& tx) {
               auto a = tx.get("assignment", c.param("id"));
               if (!a || a->parent_id != c.who().node_id) throw not_found("assignment", std::string(c.param("id")));
               std::string prev = a->data.value("phase", "");
               if (prev != "exited" && prev != "lost" && prev != phase) {
                 a->data["phase"] = phase;
                 if (code) a->data["exit_code"] = *code;
                 a->data[phase + "_at"] = now_ms();
                 tx.update(*a);
               }
               if (log && log_total) {
                 // Keep the last 256 KiB of each rank's output on the server.
                 constexpr size_t kKeep = 256 * 1024;
                 Object l;
                 auto existing = tx.get("log", "log_" + a->id);
                 if (existing) l = *existing;
                 else {
                   l.kind = "log";
                   l.id = "log_" + a->id;
                   l.org_id = a->org_id;
                   l.project_id = a->project_id;
                   l.data = {{"text", ""}, {"total", 0}};
                 }
                 int64_t have = l.data.value("total", int64_t(0));
                 int64_t from = *log_total - int64_t(log->size());  // where this chunk starts
                 if (*log_total > have) {
                   std::string text = l.data.value("text", "");
                   std::string add = from >= have ? *log : log->substr(size_t(have - from));
                   text += add;
                   if (text.size() > kKeep) text = text.substr(text.size() - kKeep);
                   l.data["text"] = text;
                   l.data["total"] = *log_total;
                   if (existing) tx.update(l); else tx.insert(l);
                 }
               }
               auto w = tx.get("workload", a->data.value("workload_id", ""));
               if (w) reconcile_workload(tx, *w);
               return json{{"object", "assignment.status"}, {"desired", a->data.value("desired", "run")}};
             });
           }});
}

}  // namespace aicloud
