#include "workloads/workloads.h"

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
    tx.insert(a);
    placements.push_back({{"rank", r}, {"node_id", p.node_id}, {"node_name", p.node_name}, {"gpus", p.gpus},
                          {"assignment_id", a.id}});
  }
  status["phase"] = "starting";
  status["reason"] = nullptr;
  status["attempts"] = attempt;
  status["placements"] = placements;
  status["starting_at"] = now_unix();
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
  int running = 0, done = 0, failed = 0, lost = 0, first_bad_exit = 0;
  json rank_status = json::array();
  for (const auto& a : ranks) {
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
  }
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
    } else if (type != "instance" && attempt <= spec.value("max_retries", 0)) {
      next = "pending";
      status["reason"] = lost ? "retrying: a node running rank was lost" : "retrying after rank exit code " +
                                                                               std::to_string(first_bad_exit);
    } else {
      next = lost ? "lost" : "failed";
      status["exit_code"] = first_bad_exit;
      if (lost) status["reason"] = "a node running this workload was lost";
    }
  } else if (done == n) {
    next = type == "job" ? "succeeded" : "stopped";
    status["exit_code"] = 0;
  } else if (running == n) {
    next = "running";
  }
  if (next != phase) {
    status["phase"] = next;
    if (next == "running" && !status.contains("started_at")) status["started_at"] = now_unix();
    if (workload_terminal(next)) status["finished_at"] = now_unix();
    if (next == "pending") status.erase("placements");
  }
  if (status == before) return false;
  tx.update(w);
  return true;
}

}  // namespace aicloud
