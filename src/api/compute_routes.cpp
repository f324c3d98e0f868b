// The tenant's compute API (/v1/compute, acting in a project): instances, jobs and services,
// their logs, stop/cancel, delete, instance start and exec, and offers; and the agent's side of
// workloads (/agent/v1/assignments, with the execs to run, and reports on both).
// Placement is the scheduler controller's job (server/controller): a create only records the
// spec as pending; the controller places it and the agents run it.
#include <algorithm>
#include <cstdio>
#include <map>
#include <regex>
#include <tuple>

#include "api/app.h"
#include "capacity/leases.h"
#include "http/stream.h"
#include "scheduler/cluster.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/log.h"
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

// ---- the agents' long-poll (GET /agent/v1/assignments?wait=SECONDS&after=VERSION) ----
//
// The answer is always the node's whole list (level-triggered), with a `version` token:
// "EPOCH.N.DIGEST" in hex, where EPOCH names this server process, N is the node's change
// counter (NodeSignals, bumped after every committed write of its assignments or execs) read
// before the list was, and DIGEST sums up what the agent acts on. With `after` set to the last
// token it got and `wait` > 0, the server answers at once if what the agent acts on differs, and
// otherwise holds the request (no thread held: an http::ResponseStream) until it does, or for
// `wait` seconds, and then answers with the list anyway. One held request per node (a newer one
// supersedes it: 409), at most NodeSignals' limit in all (beyond it: answered at once).
namespace {

constexpr int64_t kMaxWaitSeconds = 60;

struct NodeWork {
  json body;            // {"object": "list", "data": [...assignments], "execs": [...]}
  uint64_t digest = 0;  // of what the agent acts on
};

// Each assignment carries log_total (the log bytes the server has), so that a restarted agent
// ships on from there; execs carry output_total for the same reason.
NodeWork node_work(Store& store, const std::string& node_id) {
  return store.read([&](Tx& tx) {
    // What the agent acts on: which assignments it has (listed, or exited: an exit is the agent's
    // own news) and each one's desired state and grace (the rest of an assignment does not change
    // once placed), and which execs are listed. What the agent reports itself (phase, health,
    // restarts, port, log and output totals) is left out, so that its own reports do not wake its
    // held request; it learns that an exited assignment is gone with the next answer. FNV-1a.
    uint64_t h = 14695981039346656037ull;
    auto mix = [&h](std::string_view s) {
      for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
      h = (h ^ 0xff) * 1099511628211ull;  // a separator no UTF-8 text holds
    };
    ListQuery q;
    q.kind = "assignment";
    q.parent_id = node_id;
    json data = json::array();
    for (const auto& a : tx.all(q)) {
      std::string phase = a.data.value("phase", "");
      if (phase == "lost") continue;
      mix(a.id);
      mix(a.data.value("desired", "run"));
      mix(std::to_string(a.data.value("grace_ms", int64_t(0))));
      if (phase == "exited") continue;
      json j = assignment_json(a);
      auto log = tx.get("log", "log_" + a.id);
      j["log_total"] = log ? log->data.value("total", int64_t(0)) : 0;
      data.push_back(std::move(j));
    }
    ListQuery eq;
    eq.kind = "exec";
    eq.parent_id = node_id;  // pending and running execs only (finished ones move to the instance)
    json execs = json::array();
    mix("execs");
    for (const auto& e : tx.all(eq)) {
      mix(e.id);
      execs.push_back({{"id", e.id}, {"assignment_id", e.data.value("assignment_id", "")},
                       {"command", e.data.value("command", json::array())},
                       {"timeout_seconds", e.data.value("timeout_seconds", 60)},
                       {"status", e.data.value("status", "pending")},
                       {"output_total", e.data.value("output_total", int64_t(0))}});
    }
    return NodeWork{json{{"object", "list"}, {"data", std::move(data)}, {"execs", std::move(execs)}}, h};
  });
}

std::string poll_token(uint64_t epoch, uint64_t version, uint64_t digest) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%llx.%llx.%llx", static_cast<unsigned long long>(epoch),
                static_cast<unsigned long long>(version), static_cast<unsigned long long>(digest));
  return buf;
}

bool parse_poll_token(std::string_view s, uint64_t& epoch, uint64_t& version, uint64_t& digest) {
  uint64_t* out[3] = {&epoch, &version, &digest};
  for (int i = 0; i < 3; ++i) {
    size_t end = i < 2 ? s.find('.') : s.size();
    if (end == std::string_view::npos || end == 0 || end > 16) return false;
    uint64_t v = 0;
    for (char ch : s.substr(0, end)) {
      int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
      if (d < 0) return false;
      v = v << 4 | uint64_t(d);
    }
    *out[i] = v;
    s.remove_prefix(i < 2 ? end + 1 : end);
  }
  return true;
}

http::Response json_reply(unsigned status, const json& body, const std::string& request_id) {
  http::Response r;
  r.status = status;
  r.body = dump_json(body);
  if (!request_id.empty()) r.headers.emplace_back("x-request-id", request_id);  // App adds it to direct answers
  return r;
}

http::Response work_reply(NodeSignals& sig, uint64_t version, const NodeWork& w, const std::string& request_id) {
  json body = w.body;
  body["version"] = poll_token(sig.epoch(), version, w.digest);
  return json_reply(200, body, request_id);
}

// One held request, from the handler to its answer.
struct LongPoll : std::enable_shared_from_this<LongPoll> {
  Store& store;
  NodeSignals& sig;
  std::string node, request_id;
  uint64_t seq = 0, digest = 0;  // the digest the agent has
  int64_t deadline_ms = 0;
  std::shared_ptr<http::ResponseStream> out;

  LongPoll(Store& st, NodeSignals& s) : store(st), sig(s) {}

  // The node's current list, read after its version (so that a change committed during the
  // read bumps past the version in the token and wakes the next poll).
  void answer_now() {
    uint64_t v = sig.version(node);
    out->reply(work_reply(sig, v, node_work(store, node), request_id));
  }
  void answer_error(const ApiError& e, std::vector<std::pair<std::string, std::string>> headers = {}) {
    http::Response r = json_reply(unsigned(e.status), e.to_json(), request_id);
    for (auto& h : headers) r.headers.push_back(std::move(h));
    out->reply(std::move(r));
  }
  static ApiError superseded() {
    return conflict("A newer request for this node's assignments arrived; this one is answered without waiting.",
                    "superseded");
  }
  static ApiError stopping() {
    return ApiError(503, "server_error", "The server is shutting down; ask again.", "shutting_down");
  }

  // Holds from version `seen`; where the node changed meanwhile, looks (and maybe holds) again.
  void hold(uint64_t seen) {
    for (;;) {
      auto self = shared_from_this();
      auto h = sig.hold(node, seq, seen, deadline_ms, [self](NodeSignals::Why why) { self->fired(why); });
      if (h == NodeSignals::Hold::kHeld) {
        // The client left, or the server began to stop, while this was not held: its callbacks
        // found nothing to take; take it here.
        if ((out->cancelled() || out->stopped()) && sig.take(node, seq) && out->stopped()) {
          answer_error(stopping(), {{"retry-after", "1"}});
        }
        return;
      }
      if (h == NodeSignals::Hold::kSuperseded) return answer_error(superseded());
      if (h == NodeSignals::Hold::kFull) return answer_now();
      uint64_t v = sig.version(node);  // kChanged: look again
      NodeWork w = node_work(store, node);
      if (w.digest != digest) return out->reply(work_reply(sig, v, w, request_id));
      seen = v;
    }
  }

  void fired(NodeSignals::Why why) {
    try {
      switch (why) {
        case NodeSignals::Why::kSuperseded:
          return answer_error(superseded());
        case NodeSignals::Why::kTimeout:
          return answer_now();
        case NodeSignals::Why::kChanged: {
          if (out->cancelled()) return;
          uint64_t v = sig.version(node);
          NodeWork w = node_work(store, node);
          if (w.digest != digest) return out->reply(work_reply(sig, v, w, request_id));
          return hold(v);  // nothing the agent acts on changed (e.g. its own report): hold on
        }
      }
    } catch (const std::exception& e) {
      spdlog::error("request {}: the assignments long-poll failed: {}", request_id, e.what());
      answer_error(internal_error("The server had an error while processing your request (request id " + request_id +
                                  ")."));
    }
  }
};

http::Response agent_assignments(Context& c, NodeLeases& leases) {
  const std::string& node = c.who().node_id;
  leases.renew(node, now_ms());  // a poll is also a beat
  NodeSignals& sig = leases.signals();
  Store& store = c.app.store();
  int64_t wait = 0;
  if (c.target.has("wait")) {
    auto s = c.target.get("wait");
    if (s.empty() || s.size() > 3 || s.find_first_not_of("0123456789") != std::string_view::npos ||
        std::stoll(std::string(s)) > kMaxWaitSeconds) {
      throw invalid_field("wait", "'wait' must be a whole number of seconds from 0 to " +
                                      std::to_string(kMaxWaitSeconds) + ".");
    }
    wait = std::stoll(std::string(s));
  }
  std::string_view after = c.target.get("after");
  if (wait == 0 || after.empty()) {
    uint64_t v = sig.version(node);
    return work_reply(sig, v, node_work(store, node), "");
  }
  uint64_t seq = sig.arrive(node);  // supersedes this node's older held request
  uint64_t epoch = 0, version = 0, digest = 0;
  bool known = parse_poll_token(after, epoch, version, digest);
  uint64_t v = sig.version(node);
  if (!known || epoch != sig.epoch() || version != v) {
    // Written since (or a token of another server process): look whether it matters to the agent.
    NodeWork w = node_work(store, node);
    if (!known || w.digest != digest) return work_reply(sig, v, w, "");
  }
  auto poll = std::make_shared<LongPoll>(store, sig);
  poll->node = node;
  poll->request_id = c.request_id;
  poll->seq = seq;
  poll->digest = digest;
  poll->deadline_ms = NodeSignals::clock_ms() + wait * 1000;
  poll->out = std::make_shared<http::ResponseStream>();
  std::weak_ptr<http::ResponseStream> weak_out = poll->out;
  poll->out->on_cancel([&sig, node, seq] { sig.take(node, seq); });  // the agent went away
  poll->out->on_stop([&sig, node, seq, weak_out, rid = c.request_id] {
    if (!sig.take(node, seq)) return;  // answered already, or hold() answers it
    if (auto out = weak_out.lock()) {
      http::Response r = json_reply(503, LongPoll::stopping().to_json(), rid);
      r.headers.emplace_back("retry-after", "1");
      out->reply(std::move(r));
    }
  });
  poll->hold(v);
  http::Response r;
  r.stream = poll->out;
  return r;
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

  // What can be launched now, by GPU type, region and class, for the caller's organization: the
  // scheduler's own figures (sched::Offer), from a Cluster built of the stored fleet, what runs
  // on it and the approved reservations. on_demand: free GPUs less what is kept for
  // reservations (any organization's: reserved work uses those); spot: free GPUs; reserved
  // (only where the organization has an active reservation): its unused reserved GPUs.
  app.add({"GET", "/v1/compute/offers", Access::kProject, false, "", [&leases](Context& c) {
             int64_t now = now_ms();
             sched::Cluster cluster;
             ListQuery zq;
             zq.kind = "zone";
             for (const auto& z : c.tx->all(zq)) {
               cluster.add_zone(z.parent_id, z.lookup, z.data.value("power_budget_kw", 0.0));
             }
             auto text = [](const json& j, const char* key) {
               auto it = j.find(key);
               return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
             };
             ListQuery q;
             q.kind = "node";
             for (const auto& n : c.tx->all(q)) {
               sched::NodeSpec spec;
               spec.gpu_type = text(n.data, "gpu_type");
               if (spec.gpu_type.empty()) continue;
               spec.id = n.id;
               spec.region = n.parent_id;
               spec.zone = text(n.data, "zone");
               bool own_zone = spec.zone.empty();  // as the scheduler controller names it
               if (own_zone) spec.zone = n.parent_id + "/default";
               spec.gpu_count = int(n.data.value("gpus", json::array()).size());
               bool ready = leases.alive(n.id, now) && n.data.value("admin_state", "schedulable") == "schedulable";
               spec.state = ready ? sched::NodeState::kReady : sched::NodeState::kNotReady;
               try {
                 if (own_zone) cluster.add_zone(n.parent_id, spec.zone);
                 cluster.add_node(spec);
               } catch (const std::exception& e) {
                 spdlog::warn("offers: node {}: {}", n.id, e.what());
               }
             }
             ListQuery aq;
             aq.kind = "assignment";
             std::map<std::string, sched::Running> running;
             for (const auto& a : c.tx->all(aq)) {
               std::string phase = a.data.value("phase", "");
               auto gpus = a.data.value("gpus", std::vector<int>{});
               if (phase == "exited" || phase == "lost" || gpus.empty() || !cluster.find_node(a.parent_id)) continue;
               auto& r = running[a.data.value("workload_id", "")];
               r.org = a.org_id;
               r.on.push_back({a.parent_id, gpus});
             }
             for (auto& [id, r] : running) {
               auto w = c.tx->get("workload", id);
               std::string cls = w ? w->data["spec"].value("class", "on_demand") : "on_demand";
               r.workload = id;
               r.cls = cls == "reserved" ? sched::Class::kReserved : cls == "spot" ? sched::Class::kSpot : sched::Class::kOnDemand;
               try {
                 cluster.add_running(r);
               } catch (const std::exception& e) {
                 spdlog::warn("offers: workload {}: {}", id, e.what());
               }
             }
             ListQuery rq;
             rq.kind = "reservation";
             std::vector<sched::Reservation> resvs;
             for (const auto& r : c.tx->all(rq)) {
               const json& d = r.data;
               if (d.value("status", "") != "approved") continue;
               resvs.push_back({r.id, r.org_id, d.value("gpu_type", ""), d.value("region", ""), d.value("gpus", 0),
                                d.value("start_time", int64_t(0)), d.value("end_time", int64_t(0)), true});
             }
             cluster.set_reservations(std::move(resvs));
             std::vector<sched::Offer> offers = cluster.offers(now / 1000, c.who().org_id);
             std::sort(offers.begin(), offers.end(), [](const sched::Offer& a, const sched::Offer& b) {
               return std::tie(a.gpu_type, a.region) < std::tie(b.gpu_type, b.region);
             });
             json data = json::array();
             auto row = [&](const sched::Offer& o, const char* cls, int total, int available) {
               data.push_back({{"object", "compute.offer"}, {"gpu_type", o.gpu_type}, {"region", o.region}, {"class", cls},
                               {"gpus_total", total}, {"gpus_available", available}, {"nodes", o.nodes}});
             };
             for (const auto& o : offers) {
               if (o.reserved_gpus > 0) row(o, "reserved", o.reserved_gpus, o.reserved_available());
               row(o, "on_demand", o.total_gpus, o.on_demand_gpus());
               row(o, "spot", o.total_gpus, o.free_gpus);
             }
             return json{{"object", "list"}, {"data", data}, {"has_more", false}};
           }});

  // Agents: their assignments (what to run, what to stop) and the execs to run in them, as a
  // long-poll (above), and reports on both. A commit that writes a node's assignments or execs
  // (placements, stops, preemptions, lost nodes, new execs, the agents' own reports) bumps the
  // node's version, which wakes its held request.
  {
    std::weak_ptr<NodeSignals> weak = leases.signals_weak();
    app.store().watch_commits({"assignment", "exec"}, [weak](const std::vector<WrittenObject>& written) {
      auto sig = weak.lock();
      if (!sig) return;
      for (const auto& w : written) {
        // A finished exec is filed under its instance: no agent waits on that.
        if (w.parent_id.empty() || (w.kind == "exec" && w.parent_id.rfind("inst_", 0) == 0)) continue;
        sig->bump(w.parent_id);
      }
    });
  }
  app.add({"GET", "/agent/v1/assignments", Access::kNode, false, "", nullptr,
           [&leases](Context& c) { return agent_assignments(c, leases); }});
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
