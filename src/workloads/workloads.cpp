#include "workloads/workloads.h"

#include <set>

#include "util/ids.h"
#include "util/time.h"

namespace aicloud {

json workload_json(const Object& w) {
  json j = {{"object", "compute." + w.data.value("type", std::string("job"))},
            {"id", w.id},
            {"project_id", w.project_id},
            {"name", w.data.value("name", "")},
            {"created_at", w.created_at},
            {"spec", w.data.value("spec", json::object())},
            {"status", w.data.value("status", json::object())}};
  // Secrets in the environment (a model replica's engine key) are for the agent only.
  json& spec = j["spec"];
  if (spec.contains("secret_env") && spec.contains("env")) {
    for (const auto& k : spec["secret_env"]) {
      if (k.is_string() && spec["env"].contains(k.get<std::string>())) spec["env"][k.get<std::string>()] = "<redacted>";
    }
  }
  return j;
}

json assignment_json(const Object& a) {
  json j = a.data;
  j["object"] = "assignment";
  j["id"] = a.id;
  j["node_id"] = a.parent_id;
  j["generation"] = a.version;
  return j;
}

std::vector<Object> assignments_of(Tx& tx, const Object& w) {
  ListQuery q;
  q.kind = "assignment";
  q.project_id = w.project_id;
  std::vector<Object> out;
  for (auto& a : tx.all(q)) {
    if (a.data.value("workload_id", "") == w.id) out.push_back(std::move(a));
  }
  return out;
}


void place_workload(Tx& tx, Object& w, const std::vector<RankPlacement>& ranks, const std::string& master_addr) {
  const json& spec = w.data["spec"];
  // A service with port 0 (model replicas) gets a free port from its node's agent, which reports
  // it; the endpoint is known from then on.
  auto port_of = [&] { return spec.value("port", 0); };
  json& status = w.data["status"];
  int attempt = status.value("attempts", 0) + 1;
  int world = int(ranks.size());
  json placements = json::array();
  for (int r = 0; r < world; ++r) {
    const auto& p = ranks[size_t(r)];
    json env = spec.value("env", json::object());
    int gpus_per = int(p.gpus.size());
    // What torchrun and friends need; AICLOUD_RANK counts nodes (one rank per node).
    env["AICLOUD_RANK"] = std::to_string(r);
    env["AICLOUD_NODE_RANK"] = std::to_string(r);
    env["AICLOUD_WORLD_SIZE"] = std::to_string(world);
    env["AICLOUD_GPUS_PER_NODE"] = std::to_string(gpus_per);
    env["AICLOUD_MASTER_ADDR"] = master_addr;
    env["AICLOUD_MASTER_PORT"] = "29500";
    env["AICLOUD_WORKLOAD_ID"] = w.id;
    bool service = w.data.value("type", "") == "service";
    if (service && port_of() != 0) env["AICLOUD_PORT"] = std::to_string(port_of());
    Object a;
    a.kind = "assignment";
    a.id = new_id("asg_");
    a.org_id = w.org_id;
    a.project_id = w.project_id;
    a.parent_id = p.node_id;
    a.data = {{"workload_id", w.id}, {"rank", r}, {"world_size", world}, {"attempt", attempt},
              {"gpus", p.gpus}, {"command", spec.value("command", json::array())}, {"env", env},
              {"memory_bytes", spec.value("memory_bytes", int64_t(0))}, {"cpus", spec.value("cpus", 0.0)},
              {"desired", "run"}, {"phase", "assigned"}, {"exit_code", nullptr}, {"grace_ms", 30000},
              {"assigned_at", now_ms()}};
    if (service) {
      // The agent restarts the process in place when it exits or fails its health check.
      a.data["port"] = port_of();
      a.data["health_check"] = spec.value("health_check", json::object());
      a.data["restart_policy"] = "always";
    }
    tx.insert(a);
    placements.push_back({{"rank", r}, {"node_id", p.node_id}, {"node_name", p.node_name}, {"gpus", p.gpus},
                          {"assignment_id", a.id}});
  }
  status["phase"] = "starting";
  status["reason"] = nullptr;
  status["attempts"] = attempt;
  status["placements"] = placements;
  status["starting_at"] = now_unix();
  if (w.data.value("type", "") == "service") {
    status["ready"] = false;
    status["endpoint"] = ranks.empty() || port_of() == 0
                             ? json(nullptr)
                             : json(ranks.front().node_name + ":" + std::to_string(port_of()));
    status.erase("health");
  }
  tx.update(w);
}

void stop_assignments(Tx& tx, const Object& w, int64_t grace_ms) {
  for (auto& a : assignments_of(tx, w)) {
    std::string ph = a.data.value("phase", "");
    if (a.data.value("desired", "") == "run" && ph != "exited" && ph != "lost") {
      a.data["desired"] = "stop";
      a.data["grace_ms"] = grace_ms;
      tx.update(a);
    }
  }
}

namespace {

// Execs of an instance that ended on a node that is gone will never be reported: they end here.
void end_execs(Tx& tx, const Object& w, const std::vector<Object>& ranks) {
  for (const auto& a : ranks) {
    if (a.data.value("phase", "") != "lost") continue;
    ListQuery q;
    q.kind = "exec";
    q.parent_id = a.parent_id;  // active execs are indexed by their node
    for (auto& e : tx.all(q)) {
      if (e.data.value("instance_id", "") != w.id) continue;
      e.data["status"] = "exited";
      e.data["error"] = "the node running the instance was lost";
      e.data["finished_at"] = now_unix();
      e.parent_id = w.id;
      tx.update(e);
    }
  }
}

}  // namespace

bool reconcile_workload(Tx& tx, Object& w) {
  json& status = w.data["status"];
  std::string phase = status.value("phase", "pending");
  if (workload_terminal(phase) || phase == "pending") return false;
  const json& spec = w.data["spec"];
  std::string type = w.data.value("type", "job");
  int attempt = status.value("attempts", 0);

  // This attempt's ranks.
  std::vector<Object> ranks;
  for (auto& a : assignments_of(tx, w)) {
    if (a.data.value("attempt", 0) == attempt) ranks.push_back(std::move(a));
  }
  if (ranks.empty()) return false;
  int running = 0, done = 0, failed = 0, lost = 0, first_bad_exit = 0, healthy = 0;
  json rank_status = json::array();
  json health = nullptr;  // rank 0's, for a service
  for (const auto& a : ranks) {
    if (a.data.contains("health") && a.data["health"].is_object()) {
      healthy += a.data["health"].value("healthy", false);
      if (health.is_null()) health = a.data["health"];
    }
    std::string ph = a.data.value("phase", "assigned");
    running += ph == "running";
    bool exited = ph == "exited";
    bool is_lost = ph == "lost";
    done += exited || is_lost;
    lost += is_lost;
    int code = a.data["exit_code"].is_number() ? a.data["exit_code"].get<int>() : 0;
    if ((exited && code != 0) || is_lost) {
      if (!failed) first_bad_exit = is_lost ? -1 : code;
      ++failed;
    }
    rank_status.push_back({{"rank", a.data["rank"]}, {"node_id", a.parent_id}, {"phase", ph},
                           {"exit_code", a.data["exit_code"]}});
    if (a.data.contains("restarts")) rank_status.back()["restarts"] = a.data["restarts"];
  }
  bool service = type == "service";
  int n = int(ranks.size());
  std::string next = phase;
  json before = status;
  status["ranks"] = rank_status;

  if (phase == "cancelling" || phase == "preempting" || phase == "stopping") {
    if (done == n) {
      next = phase == "cancelling" ? "cancelled" : phase == "preempting" ? "preempted" : "stopped";
    }
  } else if (failed > 0) {
    // A gang fails together: stop the other ranks, then retry or give up.
    if (done < n) {
      stop_assignments(tx, w, 10000);
    } else if ((service && lost) || (type != "instance" && attempt <= spec.value("max_retries", 0))) {
      // Services are rescheduled whenever their node is lost; jobs retry while attempts remain.
      next = "pending";
      status["reason"] = service && lost ? "rescheduling: the node running it was lost"
                         : lost          ? "retrying: a node running rank was lost"
                                         : "retrying after rank exit code " + std::to_string(first_bad_exit);
    } else {
      next = lost ? "lost" : "failed";
      status["exit_code"] = first_bad_exit;
      if (lost) status["reason"] = "a node running this workload was lost";
    }
  } else if (done == n) {
    next = type == "job" ? "succeeded" : "stopped";
    status["exit_code"] = 0;
  } else if (running == n && service) {
    // A service is running only while healthy; until then (and after a failed check) it is
    // starting again, and not ready.
    bool ok = healthy == n;
    next = ok ? "running" : "starting";
    if (ok) {
      status["reason"] = nullptr;
    } else {
      status["reason"] = "waiting for the health check" +
                         (health.is_object() && !health.value("message", "").empty()
                              ? ": " + health.value("message", "") : std::string());
    }
  } else if (running == n) {
    next = "running";
  }
  if (service) {
    int restarts = std::max(0, attempt - 1);  // each reschedule is a restart too
    for (const auto& a : assignments_of(tx, w)) restarts += a.data.value("restarts", 0);
    status["restarts"] = restarts;
    status["ready"] = next == "running";
    // The port rank 0's agent chose, for services that left it to the node.
    int port = ranks.front().data.value("port", 0);
    if (port != 0 && status.contains("placements") && !status["placements"].empty()) {
      status["endpoint"] = status["placements"][0].value("node_name", std::string()) + ":" + std::to_string(port);
    }
    status["health"] = health;
  }
  if (next != phase) {
    status["phase"] = next;
    if (next == "running" && !status.contains("started_at")) status["started_at"] = now_unix();
    if (workload_terminal(next)) status["finished_at"] = now_unix();
    if (next == "pending") {
      status.erase("placements");
      if (service) status["endpoint"] = nullptr;
    }
    if (workload_terminal(next) && type == "instance") end_execs(tx, w, ranks);
  }
  if (status == before) return false;
  tx.update(w);
  return true;
}

}  // namespace aicloud
