// The scheduler's inputs: plain values that the server fills from its store (and the tests and the
// fleet simulator fill by hand). Nothing here knows about HTTP, JSON or SQL.
//
// The model is the one in docs/ARCHITECTURE.md: regions hold zones (a data centre with a power
// budget), zones hold NVLink domains (a GB200 NVL72 rack), domains hold nodes, nodes hold GPUs of
// one type. A workload asks for `nodes` x `gpus_per_node` GPUs of one type, all or nothing.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aicloud::sched {

// A node's state as the control plane sees it. Only ready nodes take new work; the others keep
// what already runs on them (the server decides what a lost or draining node's work becomes).
enum class NodeState : uint8_t { kReady, kNotReady, kCordoned, kDraining };
const char* to_string(NodeState s);

// Capacity classes, in the order the queue serves them. Only spot work is ever preempted.
enum class Class : uint8_t { kReserved = 0, kOnDemand = 1, kSpot = 2 };
const char* to_string(Class c);

using Labels = std::vector<std::pair<std::string, std::string>>;

// A node with a taint takes only workloads that tolerate it (Kubernetes' NoSchedule).
struct Taint {
  std::string key, value;
};
// Tolerates taints with this key and value; an empty value tolerates any value of the key, an
// empty key tolerates every taint.
struct Toleration {
  std::string key, value;
};

// A node as registered by the operator or the agent. A node belongs to one NVLink domain; a node
// without one (an 8-GPU HGX box) is a domain of its own, which is what NVLink makes it.
struct NodeSpec {
  std::string id;
  std::string region, zone;
  std::string nvlink_domain;  // "" = its own domain
  std::string gpu_type;       // "H100-80GB", "GB200", ...; every GPU of a node has one type
  int gpu_count = 0;          // 0..64 (GPU indices 0..gpu_count-1)
  int gpu_watts = 700;        // drawn per busy GPU, counted against the zone's power budget
  Labels labels;
  std::vector<Taint> taints;
  NodeState state = NodeState::kReady;
};

// A workload waiting to be placed: an instance (1 node), a job or a service (a gang).
struct Workload {
  std::string id, org, project;
  Class cls = Class::kOnDemand;
  int priority = 0;         // higher runs first, within a class
  int64_t submit_time = 0;  // unix seconds; older runs first
  uint64_t seq = 0;         // tie-break of submit_time (the store's insertion order)
  int nodes = 1;            // gang: all nodes or none
  int gpus_per_node = 1;
  std::string gpu_type;     // required
  std::string region;       // "" = any region (a gang never spans regions)
  std::string zone;         // "" = any zone of the region
  Labels node_selector;     // every pair must be among the node's labels
  std::vector<Toleration> tolerations;
  // Host ports it listens on, on each of its nodes (a service with a fixed port): a node where
  // another workload holds one of them cannot take it.
  std::vector<int> ports;

  int gpus() const { return nodes * gpus_per_node; }
};

// Devices of one node held by a workload.
struct NodeGpus {
  std::string node;
  std::vector<int> gpus;  // indices, ascending
};

// A workload that holds GPUs: what the server restores at start-up, from its store.
struct Running {
  std::string workload, org, project;
  Class cls = Class::kOnDemand;
  std::vector<NodeGpus> on;
  std::vector<int> ports;  // host ports it holds on each of its nodes
};

// An approved reservation guarantees `gpus` GPUs of a type in a region to one organization's
// reserved-class workloads between `start` and `end` (unix seconds, end exclusive).
struct Reservation {
  std::string id, org, gpu_type, region;
  int gpus = 0;
  int64_t start = 0, end = 0;
  bool approved = false;
};

// At most `max_gpus` GPUs held at once by the on-demand and spot workloads of `scope` (an
// organization or a project id). An empty gpu_type or region matches every one. Reserved work
// is bounded by its reservation instead.
struct QuotaLimit {
  std::string scope;
  std::string gpu_type, region;
  int max_gpus = 0;
};

}  // namespace aicloud::sched
