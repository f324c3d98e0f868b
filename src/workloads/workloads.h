// Workloads (instances, jobs, services) and their assignments, as stored objects, and the
// reconciliation that derives a workload's status from its assignments' reports
// (level-triggered: it reads all of them each time, so a lost or repeated report does no harm).
//
// A workload is spec (what the tenant asked for) + status (what the system observed).
// Placing it creates one assignment per rank (kind "assignment", parent = node): that is what
// an agent sees and runs. Assignments carry a `desired` state (run/stop) the server writes and
// a `phase` the agent reports.
//
// Services (a port and an HTTP health check) carry `port`, `health_check` and
// `restart_policy: always` in their assignments: the agent probes the service, restarts it in
// place when it exits or fails its check, and reports `health` and `restarts`; the service is
// `running` and `ready` only while healthy, and is rescheduled when its node is lost.
// Instances can be started again once stopped, and deleted (`deleted_at`: 404 from then on).
// Execs (kind "exec", parent = the node while pending or running, then the instance) are
// commands run inside a running instance; the agent picks them up with its assignments.
#pragma once
#include <string>
#include <vector>

#include "store/store.h"
#include "util/json_util.h"

namespace aicloud {

// Phases a workload goes through.
//   pending -> starting -> running -> succeeded | failed | stopped
//   any -> cancelling -> cancelled; preempting -> preempted; lost (a node died) -> pending on retry
//   services: starting <-> running as their health check passes or fails; stopping -> stopped
//   instances: stopped | failed | lost | preempted -> pending again on start
inline bool workload_terminal(const std::string& phase) {
  return phase == "succeeded" || phase == "failed" || phase == "cancelled" || phase == "preempted" ||
         phase == "stopped" || phase == "lost";
}

// Deleted workloads stay stored (for audit and billing) but are 404 to the API.
inline bool workload_deleted(const Object& w) { return w.data.contains("deleted_at"); }

json workload_json(const Object& w);  // the API shape: compute.instance | compute.job | compute.service
json assignment_json(const Object& a);

// One placement of one rank: node, GPU indices.
struct RankPlacement {
  std::string node_id;
  std::string node_name;
  std::vector<int> gpus;
};

// Writes the assignments for a placed workload (one per rank, in rank order) and marks it
// starting. ranks.size() must be nodes * 1 (one rank per node; a rank uses gpus_per_node GPUs).
void place_workload(Tx& tx, Object& w, const std::vector<RankPlacement>& ranks, const std::string& master_addr);

// Recomputes w.status from its assignments and moves it on: finished jobs succeed or fail,
// failed ones are retried while attempts remain, cancelled/stopped ones settle.
// Returns true if w changed (and was written).
bool reconcile_workload(Tx& tx, Object& w);

// Asks every live assignment of w to stop (SIGTERM, then SIGKILL after grace_ms).
void stop_assignments(Tx& tx, const Object& w, int64_t grace_ms);

std::vector<Object> assignments_of(Tx& tx, const Object& w);

}  // namespace aicloud
