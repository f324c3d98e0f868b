// Plan: what one scheduling round decided. The server writes it to its store in one transaction
// and then calls apply() so that the Cluster agrees with the store.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "scheduler/types.h"

namespace aicloud::sched {

using NodeIdx = uint32_t;
class Cluster;

// Where a gang landed, best first.
enum class Tier : uint8_t { kDomain, kZone, kRegion };
const char* to_string(Tier t);

// A workload placed, all or nothing: every node of the gang with its GPU indices.
struct Placement {
  std::string workload, org, project;
  Class cls = Class::kOnDemand;
  std::vector<std::pair<NodeIdx, uint64_t>> gpus;  // node -> devices (bit i = GPU i), rank order
  Tier tier = Tier::kDomain;
  std::string reason;  // where and why, for status.reason and the audit log
  // Spot workloads whose GPUs this placement takes. The scheduler's books give their GPUs to
  // this workload at once; the agents start it on those devices only after the victims have
  // exited (SIGTERM, the notice period, then SIGKILL).
  std::vector<std::string> preempts;
  std::vector<int> ports;  // the workload's host ports, held on each of its nodes
};

// A spot workload to stop: the caller marks it preempting and sends the notice.
struct Preemption {
  std::string victim, by, reason;
};

enum class PendingCode : uint8_t {
  kInvalid,           // malformed request (0 GPUs, no type) or already running
  kInfeasible,        // no node could ever take it: type, region, zone, labels, taints, size
  kNoCapacity,        // it fits the fleet, not what is free now
  kPower,             // a zone's power budget
  kQuota,             // over an organization's or project's quota
  kNoReservation,     // reserved class without an active reservation
  kReservationFull,   // reserved class beyond the reservation's GPUs
  kReservedCapacity,  // on-demand: what is free is reserved for other organizations
  kQueued,            // strict mode: behind a blocked workload of its pool
  kPortInUse,         // every node with room already has a workload on one of its ports
};
const char* to_string(PendingCode c);

struct Pending {
  std::string workload;
  PendingCode code = PendingCode::kNoCapacity;
  std::string reason;  // for a person: status.reason
};

// Nodes kept for a blocked workload at the head of its pool's queue, so that smaller work
// behind it (backfill) cannot delay it: nothing behind it is placed on these nodes, so they
// only drain.
struct Hold {
  std::string workload;
  std::vector<NodeIdx> nodes;
};

struct PlanStats {
  int evaluated = 0, placed = 0, preempted = 0, pending = 0;
  std::vector<uint32_t> decision_ns;  // per evaluated workload, if Options::record_decision_times
};

struct Plan {
  std::vector<Placement> placements;  // in queue order
  std::vector<Preemption> preemptions;
  std::vector<Pending> pending;
  std::vector<Hold> holds;
  PlanStats stats;
};

// A placement's devices by node id, for the server's assignments.
std::vector<NodeGpus> describe(const Cluster& cluster, const Placement& p);

}  // namespace aicloud::sched
