// The tenant's compute API (/v1/compute, acting in a project): instances, jobs and services,
// their logs, stop/cancel, delete, instance start and exec, and offers; and the agent's side of
// workloads (/agent/v1/assignments, with the execs to run, and reports on both).
// Placement is the scheduler controller's job (server/controller): a create only records the
// spec as pending; the controller places it and the agents run it.
#include <algorithm>
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

// A service's health check: GET http://127.0.0.1:PORT{path} every interval_seconds, healthy on
// 2xx/3xx within timeout_seconds; failure_threshold failures in a row (after it was healthy once,
// or no success within startup_timeout_seconds) restart it.
json health_check_field(BodyReader& b) {
  const json* in = b.opt_object("health_check");
  json hc = {{"path", "/health"}, {"interval_seconds", 2}, {"timeout_seconds", 1}, {"failure_threshold", 3},
             {"startup_timeout_seconds", 600}};
  if (!in) return hc;
  try {
    BodyReader h(*in);
    if (auto path = h.opt_str("path", 1, 1024)) {
      bool printable = std::all_of(path->begin(), path->end(), [](char ch) { return ch > 0x20 && ch < 0x7f; });
      if (path->front() != '/' || !printable) {
        throw invalid_field("path", "'path' must start with '/' and hold no spaces or control characters.");
      }
      hc["path"] = *path;
    }
    if (auto v = h.opt_int("interval_seconds", 1, 3600)) hc["interval_seconds"] = *v;
    if (auto v = h.opt_int("timeout_seconds", 1, 3600)) hc["timeout_seconds"] = *v;
    if (auto v = h.opt_int("failure_threshold", 1, 100)) hc["failure_threshold"] = *v;
    if (auto v = h.opt_int("startup_timeout_seconds", 1, 86400)) hc["startup_timeout_seconds"] = *v;
    h.done();
  } catch (const ApiError& e) {
    // Name the nested field as the client wrote it: health_check.path.
    std::string msg = e.what();
    for (size_t at; !e.param.empty() && (at = msg.find("'" + e.param + "'")) != std::string::npos;) {
      msg.replace(at, e.param.size() + 2, "'health_check." + e.param + "\x01");
    }
    for (size_t at; (at = msg.find('\x01')) != std::string::npos;) msg[at] = '\'';
    throw ApiError(e.status, e.type, msg, e.code, e.param.empty() ? "health_check" : "health_check." + e.param);
  }
  return hc;
}

json create_workload(Context& c, const Kind& k) {
  BodyReader b(c.body);
  std::string name = b.opt_str("name", 1, 128).value_or("");
  std::string region = b.str("region", 1, 63);
  std::string zone = b.opt_str("zone", 1, 63).value_or("");
  std::string cls = b.opt_enum("class", {"reserved", "on_demand", "spot"}).value_or("on_demand");
  int64_t priority = b.opt_int("priority", 0, 1000).value_or(0);
  int64_t nodes = 1, gpus_per_node = 0, max_retries = 0, port = 0;
  if (k.type == kJobs.type) {
    nodes = b.opt_int("nodes", 1, 1024).value_or(1);
    gpus_per_node = b.opt_int("gpus_per_node", 1, 64).value_or(1);
    max_retries = b.opt_int("max_retries", 0, 100).value_or(0);
  } else {
    gpus_per_node = b.opt_int("gpus", 1, 64).value_or(1);
  }
  json health_check;
  if (k.type == kServices.type) {
    auto p = b.opt_int("port", 1, 65535);
    if (!p) {
      throw ApiError(400, "invalid_request_error", "Missing required parameter: 'port' (the port the service listens on).",
                     "missing_required_parameter", "port");
    }
    port = *p;
    health_check = health_check_field(b);
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
    spec["health_check"] = health_check;
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
  if (!w || w->project_id != c.who().project_id || w->data.value("type", "") != k.type || workload_deleted(*w)) {
    throw not_found(k.type, std::string(c.param("id")));
  }
  return *w;
}

// Stop (instances, services) or cancel (jobs): placed ranks get SIGTERM, then SIGKILL after
// grace; an unplaced workload ends at once. A no-op on a workload that already ended.
void stop_workload(Context& c, const Kind& k, Object& w, int64_t grace_seconds) {
  json& st = w.data["status"];
  std::string ph = st.value("phase", "pending");
  if (workload_terminal(ph) || ph == "stopping" || ph == "cancelling" || ph == "preempting") return;
  bool placed = ph != "pending";
  std::string stopping = k.type == kJobs.type ? "cancelling" : "stopping";
  std::string stopped = k.type == kJobs.type ? "cancelled" : "stopped";
  st["phase"] = placed ? stopping : stopped;
  if (!placed) st["finished_at"] = now_unix();
  st["reason"] = "requested by " + c.who().actor_id;
  if (k.type == kServices.type) st["ready"] = false;
  c.tx->update(w);
  if (placed) stop_assignments(*c.tx, w, grace_seconds * 1000);
  reconcile_workload(*c.tx, w);
}

int64_t query_offset(Context& c) {
  if (!c.target.has("offset")) return 0;
  auto s = c.target.get("offset");
  if (s.empty() || s.size() > 15 || s.find_first_not_of("0123456789") != std::string_view::npos) {
    throw invalid_field("offset", "'offset' must be a byte offset.");
  }
  return std::stoll(std::string(s));
}

// Appends a chunk that ends at byte `chunk_end` of a stream to the tail kept in data[text]
// (data[total] = bytes of the stream seen so far), keeping at most `keep` bytes. Repeated or
// overlapping chunks (a report sent again after a lost answer) add nothing twice.
bool append_tail(json& data, const char* text_field, const char* total_field, const std::string& chunk,
                 int64_t chunk_end, size_t keep) {
  int64_t have = data.value(total_field, int64_t(0));
  if (chunk_end <= have) return false;
  int64_t from = chunk_end - int64_t(chunk.size());  // where this chunk starts
  std::string text = data.value(text_field, "");
  if (from > have) text.clear();  // a gap (bytes rotated away on the node): what is kept restarts here
  text += from >= have ? chunk : chunk.substr(size_t(have - from));
  if (text.size() > keep) text = text.substr(text.size() - keep);
  data[text_field] = text;
  data[total_field] = chunk_end;
  return true;
}

// compute.exec: output from `offset` (clamped to what is kept), next_offset = the end so far.
json exec_json(const Object& e, int64_t offset) {
  const json& d = e.data;
  int64_t total = d.value("output_total", int64_t(0));
  std::string kept = d.value("output", "");
  int64_t start = total - int64_t(kept.size());
  offset = std::clamp(offset, start, total);
  return {{"object", "compute.exec"}, {"id", e.id}, {"instance_id", d.value("instance_id", "")},
          {"command", d.value("command", json::array())}, {"status", d.value("status", "pending")},
          {"exit_code", d.value("exit_code", json())}, {"timed_out", d.value("timed_out", false)},
          {"error", d.value("error", json())}, {"output", kept.substr(size_t(offset - start))}, {"offset", offset},
          {"next_offset", total}, {"timeout_seconds", d.value("timeout_seconds", 60)}, {"created_at", e.created_at},
          {"started_at", d.value("started_at", json())}, {"finished_at", d.value("finished_at", json())}};
}

constexpr size_t kExecOutputKeep = 1 << 20;  // the last 1 MiB of an exec's output

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
                 if (o.data.value("type", "") != k.type || workload_deleted(o)) continue;
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
             stop_workload(c, k, w, grace);
             c.audit_resource = w.id;
             return workload_json(w);
           }});

  // Delete. An instance is stopped first if it runs; a job or service must have ended (cancel
  // or stop it first: 409). The object stays stored for audit and billing, 404 from now on.
  app.add({"DELETE", base + "/{id}", Access::kProject, true, std::string(k.type) + ".deleted", [&k](Context& c) {
             Object w = owned_workload(c, k);
             std::string ph = w.data["status"].value("phase", "pending");
             if (!workload_terminal(ph)) {
               if (k.type != kInstances.type) {
                 throw conflict(std::string(k.type == kJobs.type ? "Job " : "Service ") + w.id + " is " + ph + "; " +
                                    (k.type == kJobs.type ? "cancel" : "stop") + " it before deleting it.",
                                "workload_active");
               }
               stop_workload(c, k, w, 30);
             }
             w.data["deleted_at"] = now_unix();
             c.tx->update(w);
             c.audit_resource = w.id;
             return json{{"id", w.id}, {"object", std::string("compute.") + k.type}, {"deleted", true}};
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
             int64_t offset = query_offset(c);
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

// Instances only: start again, and exec (a command run inside a running instance).
void add_instance_routes(App& app) {
  const Kind& k = kInstances;
  // A stopped (or failed, lost, preempted) instance goes pending again and is placed anew.
  app.add({"POST", "/v1/compute/instances/{id}/start", Access::kProject, true, "instance.started", [&k](Context& c) {
             Object w = owned_workload(c, k);
             BodyReader(c.body).done();
             json& st = w.data["status"];
             std::string ph = st.value("phase", "pending");
             if (!workload_terminal(ph)) {
               throw conflict("Instance " + w.id + " is " + ph + "; only a stopped instance can be started.",
                              "instance_not_stopped");
             }
             // A fresh status; attempts go on counting, so the new placement's assignments are new.
             w.data["status"] = {{"phase", "pending"}, {"reason", "waiting for the scheduler"},
                                 {"attempts", st.value("attempts", 0)}, {"previous_phase", ph}};
             c.tx->update(w);
             c.audit_resource = w.id;
             return workload_json(w);
           }});

  app.add({"POST", "/v1/compute/instances/{id}/exec", Access::kProject, true, "instance.exec", [&k](Context& c) {
             Object w = owned_workload(c, k);
             BodyReader b(c.body);
             json command;
             auto it = c.body.find("command");
             if (it == c.body.end() || it->is_null()) {
               (void)b.opt_str("command");
               throw ApiError(400, "invalid_request_error", "Missing required parameter: 'command'.",
                              "missing_required_parameter", "command");
             }
             if (it->is_string()) {
               command = json::array({"sh", "-c", *b.opt_str("command", 1, 65536)});
             } else {
               const json* arr = b.opt_array("command");
               if (arr->empty() || arr->size() > 1024) {
                 throw invalid_field("command", "'command' must have 1 to 1024 arguments.");
               }
               for (const auto& a : *arr) {
                 if (!a.is_string() || a.get_ref<const std::string&>().empty() ||
                     a.get_ref<const std::string&>().size() > 65536) {
                   throw invalid_field("command", "'command' must be a string or an array of non-empty strings.");
                 }
               }
               command = *arr;
             }
             int64_t timeout = b.opt_int("timeout_seconds", 1, 3600).value_or(60);
             b.done();
             const json& st = w.data["status"];
             std::string ph = st.value("phase", "pending");
             const json placements = st.value("placements", json::array());
             if (ph != "running" || placements.empty()) {
               throw conflict("Instance " + w.id + " is " + ph + "; exec needs a running instance.",
                              "instance_not_running");
             }
             Object e;
             e.kind = "exec";
             e.id = new_id("exec_");
             e.org_id = w.org_id;
             e.project_id = w.project_id;
             e.parent_id = placements[0].value("node_id", "");  // the node's agent picks it up
             e.data = {{"instance_id", w.id}, {"assignment_id", placements[0].value("assignment_id", "")},
                       {"node_id", e.parent_id}, {"command", command}, {"timeout_seconds", timeout},
                       {"status", "pending"}, {"exit_code", nullptr}, {"output", ""}, {"output_total", 0}};
             c.tx->insert(e);
             c.audit_resource = w.id;
             c.audit_details = {{"exec_id", e.id}};
             c.status = 201;
             return exec_json(e, 0);
           }});

  // An exec's state and output from ?offset=N: poll with next_offset to follow it.
  app.add({"GET", "/v1/compute/instances/{id}/exec/{exec_id}", Access::kProject, false, "", [&k](Context& c) {
             Object w = owned_workload(c, k);
             auto e = c.tx->get("exec", c.param("exec_id"));
             if (!e || e->project_id != w.project_id || e->data.value("instance_id", "") != w.id) {
               throw not_found("exec", std::string(c.param("exec_id")));
             }
             return exec_json(*e, query_offset(c));
           }});
}

}  // namespace

void add_compute_routes(App& app, NodeLeases& leases) {
  add_kind_routes(app, kInstances);
  add_kind_routes(app, kJobs);
  add_kind_routes(app, kServices);
  add_instance_routes(app);

  // Node leases live in memory. A restarted server knows its nodes but not when they last beat:
  // each gets one full lease term to check in, so that a server restart does not declare every
  // node lost (and retry or stop everything they run) before their agents could reconnect.
  {
    int64_t now = now_ms();
    app.store().read([&](Tx& tx) {
      ListQuery q;
      q.kind = "node";
      for (const auto& n : tx.all(q)) leases.renew(n.id, now);
    });
  }

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

  // Agents: their assignments (what to run, what to stop) and the execs to run in them, and
  // reports on both. Each assignment carries log_total (the log bytes the server has), so that a
  // restarted agent ships on from there.
  app.add({"GET", "/agent/v1/assignments", Access::kNode, false, "", [&leases](Context& c) {
             leases.renew(c.who().node_id, now_ms());  // a poll is also a beat
             ListQuery q;
             q.kind = "assignment";
             q.parent_id = c.who().node_id;
             json data = json::array();
             for (const auto& a : c.tx->all(q)) {
               if (a.data.value("phase", "") == "exited" || a.data.value("phase", "") == "lost") continue;
               json j = assignment_json(a);
               auto log = c.tx->get("log", "log_" + a.id);
               j["log_total"] = log ? log->data.value("total", int64_t(0)) : 0;
               data.push_back(std::move(j));
             }
             ListQuery eq;
             eq.kind = "exec";
             eq.parent_id = c.who().node_id;  // pending and running execs only (finished ones move to the instance)
             json execs = json::array();
             for (const auto& e : c.tx->all(eq)) {
               execs.push_back({{"id", e.id}, {"assignment_id", e.data.value("assignment_id", "")},
                                {"command", e.data.value("command", json::array())},
                                {"timeout_seconds", e.data.value("timeout_seconds", 60)},
                                {"status", e.data.value("status", "pending")},
                                {"output_total", e.data.value("output_total", int64_t(0))}});
             }
             return json{{"object", "list"}, {"data", data}, {"execs", execs}};
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
             auto restarts = b.opt_int("restarts", 0, 1 << 30);
             auto port = b.opt_int("port", 1, 65535);  // a service's port, when the node chose it
             const json* health_in = b.opt_object("health");
             b.done();
             json health;
             if (health_in) {
               BodyReader h(*health_in);
               bool healthy = h.opt_bool("healthy").value_or(false);
               int64_t failures = h.opt_int("consecutive_failures", 0, 1 << 30).value_or(0);
               std::string message = h.opt_str("message", 0, 1024).value_or("");
               h.done();
               health = {{"healthy", healthy}, {"consecutive_failures", failures}, {"message", message}};
             }
             return c.app.store().write([&](Tx& tx) {
               auto a = tx.get("assignment", c.param("id"));
               if (!a || a->parent_id != c.who().node_id) throw not_found("assignment", std::string(c.param("id")));
               std::string prev = a->data.value("phase", "");
               bool changed = false;
               if (prev != "exited" && prev != "lost") {
                 if (prev != phase) {
                   a->data["phase"] = phase;
                   if (code) a->data["exit_code"] = *code;
                   a->data[phase + "_at"] = now_ms();
                   changed = true;
                 }
                 if (restarts && a->data.value("restarts", int64_t(0)) != *restarts) {
                   a->data["restarts"] = *restarts;
                   changed = true;
                 }
                 if (port && a->data.value("port", 0) == 0) {
                   a->data["port"] = *port;
                   changed = true;
                 }
                 if (!health.is_null() && a->data.value("health", json()) != health) {
                   a->data["health"] = health;
                   changed = true;
                 }
               }
               if (changed) tx.update(*a);
               if (log && log_total) {
                 // Keep the last 256 KiB of each rank's output on the server.
                 Object l;
                 auto existing = tx.get("log", "log_" + a->id);
                 if (existing) {
                   l = *existing;
                 } else {
                   l.kind = "log";
                   l.id = "log_" + a->id;
                   l.org_id = a->org_id;
                   l.project_id = a->project_id;
                   l.data = {{"text", ""}, {"total", 0}};
                 }
                 if (append_tail(l.data, "text", "total", *log, *log_total, 256 * 1024)) {
                   if (existing) tx.update(l); else tx.insert(l);
                 }
               }
               auto w = tx.get("workload", a->data.value("workload_id", ""));
               if (w) reconcile_workload(tx, *w);
               return json{{"object", "assignment.status"}, {"desired", a->data.value("desired", "run")}};
             });
           }});
  // An exec's progress: running, output chunks (output_total = where the chunk ends), and at
  // last exited with its exit code. Reports after it exited change nothing.
  app.add({"POST", "/agent/v1/execs/{id}/status", Access::kNode, false, "", [](Context& c) {
             BodyReader b(parse_json_body(c.req.body()));
             auto status_in = b.opt_enum("status", {"running", "exited"});
             if (!status_in) {
               throw ApiError(400, "invalid_request_error", "Missing required parameter: 'status'.",
                              "missing_required_parameter", "status");
             }
             auto code = b.opt_int("exit_code", -1, 1 << 16);
             auto output = b.opt_str("output", 0, 1 << 20);
             auto output_total = b.opt_int("output_total", 0, int64_t(1) << 50);
             bool timed_out = b.opt_bool("timed_out").value_or(false);
             std::string error = b.opt_str("error", 0, 1024).value_or("");
             b.done();
             return c.app.store().write([&](Tx& tx) {
               auto e = tx.get("exec", c.param("id"));
               if (!e || e->data.value("node_id", "") != c.who().node_id) {
                 throw not_found("exec", std::string(c.param("id")));
               }
               std::string prev = e->data.value("status", "pending");
               if (prev == "exited") return json{{"object", "exec.status"}, {"status", prev}};
               bool changed = false;
               if (output && output_total) {
                 changed |= append_tail(e->data, "output", "output_total", *output, *output_total, kExecOutputKeep);
               }
               if (prev == "pending") {
                 e->data["status"] = "running";
                 e->data["started_at"] = now_unix();
                 changed = true;
               }
               if (*status_in == "exited") {
                 e->data["status"] = "exited";
                 e->data["exit_code"] = code ? json(*code) : json(nullptr);
                 e->data["timed_out"] = timed_out;
                 if (!error.empty()) e->data["error"] = error;
                 e->data["finished_at"] = now_unix();
                 e->parent_id = e->data.value("instance_id", "");  // out of the node's poll
                 changed = true;
               }
               if (changed) tx.update(*e);
               return json{{"object", "exec.status"}, {"status", e->data["status"]}};
             });
           }});
}

}  // namespace aicloud
