// Cluster: the scheduler's state, the fleet and what runs on it, kept with an index of free
// capacity that every mutation updates incrementally.
//
// The server builds one Cluster at start-up from its store (add_zone, add_node, add_running,
// set_reservations, set_quotas) and then tells it what changes (a node's state, a workload that
// exits); the scheduler reads it and apply() commits a plan to it. Tests and the fleet simulator
// drive the same object. Not thread-safe: the server serializes scheduling rounds.
//
// The index (why a decision need not scan every node). Per pool = (region, GPU type):
//   - a histogram of ready nodes by free GPUs: "are there n nodes with g free?" in a few adds
//     (and one of the untainted ones: most work tolerates no taint, and tainted nodes stay free);
//   - its NVLink domains bucketed by free GPUs: best fit for a gang is "the first domain at or
//     above n*g free whose histogram has n nodes with g free";
//   - per zone, a histogram and the zone's domains, for gangs larger than a domain;
//   - free and spot GPU totals, for reservations and quick refusals.
// Only ready nodes are in the index; GPUs on other nodes are neither free nor reclaimable.
#pragma once
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "scheduler/buckets.h"
#include "scheduler/memo.h"
#include "scheduler/types.h"

namespace aicloud::sched {

using NodeIdx = uint32_t;

// GPU indices <-> bit masks (bit i = GPU i). Nodes have at most 64 GPUs.
uint64_t mask_of(const std::vector<int>& gpus);
std::vector<int> gpus_of(uint64_t mask);

// What a region offers in one GPU type right now (GET /v1/compute/offers), to one organization:
// for each class, the GPUs that its work could be placed on now, as the scheduler would admit it.
// Spot and on-demand work get free GPUs (on-demand less what is kept for reservations); reserved
// work gets its organization's unused reservation, GPUs lent to spot work included (preempted).
struct Offer {
  std::string region, gpu_type;
  int nodes = 0;              // ready nodes
  int total_gpus = 0;         // on ready nodes
  int free_gpus = 0;          // not held by anyone: what spot work can take
  int spot_gpus = 0;          // held by spot work: reserved and on-demand work may preempt it
  int reserved_headroom = 0;  // every organization's active reservations less what their reserved work holds
  int reserved_gpus = 0;      // the organization's own active reservations (approved, started, not ended)
  int reserved_unused = 0;    // of those, not held by its reserved work
  // On-demand work may not take what is kept for reservations (the organization's own included:
  // its reserved work uses that): free GPUs, as long as free + spot stays above the headroom.
  int on_demand_gpus() const {
    int n = std::min(free_gpus, free_gpus + spot_gpus - reserved_headroom);
    return n < 0 ? 0 : n;
  }
  // The organization's reserved work: what is left of its reservations, as far as GPUs are free
  // or lent to spot work (which its reserved work preempts: the reservation is a guarantee).
  int reserved_available() const { return std::min(reserved_unused, free_gpus + spot_gpus); }
};

class Round;  // scheduler.cpp
struct Plan;
struct Options;

class Cluster {
 public:
  Cluster() = default;
  Cluster(const Cluster&) = default;  // a copy is independent (the simulator forks fleets)
  Cluster& operator=(const Cluster&) = default;

  // ---- Inventory. Throw std::invalid_argument on inconsistent input.

  // Declares a zone of a region (creating the region), or updates its budget; 0 kW = no budget.
  void add_zone(const std::string& region, const std::string& zone, double power_budget_kw = 0);
  // Adds a node in state spec.state with every GPU free. Its zone must exist. An NVLink domain
  // is created by its first node; all of a domain's nodes share a zone and a GPU type.
  NodeIdx add_node(const NodeSpec& spec);
  void set_node_state(const std::string& node, NodeState state);
  void set_node_labels(const std::string& node, Labels labels);
  void set_node_taints(const std::string& node, std::vector<Taint> taints);

  // ---- Running work.

  // A workload that holds GPUs (restored from the store). Throws if a GPU is not free.
  void add_running(const Running& r);
  // The workload's GPUs are free again (it exited, was stopped, or its node was lost).
  // False if it held none.
  bool release(const std::string& workload);

  // ---- Policy. Replaced as a whole; cheap enough for the small sets these are.
  void set_reservations(std::vector<Reservation> reservations);
  void set_quotas(std::vector<QuotaLimit> quotas);

  // ---- Reads.
  size_t node_count() const { return nodes_.size(); }
  std::optional<NodeIdx> find_node(const std::string& id) const;
  const std::string& node_id(NodeIdx n) const { return nodes_[n].id; }
  NodeState node_state(NodeIdx n) const { return nodes_[n].state; }
  uint64_t node_free_mask(NodeIdx n) const { return nodes_[n].free_mask; }
  int node_gpu_count(NodeIdx n) const { return nodes_[n].gpu_count; }
  // Where a workload runs, or nullopt.
  std::optional<Running> running(const std::string& workload) const;
  bool is_running(const std::string& workload) const { return by_workload_.count(workload) > 0; }
  size_t running_count() const { return by_workload_.size(); }
  int64_t total_gpus() const { return total_gpus_; }       // every node, any state
  int64_t allocated_gpus() const { return allocated_gpus_; }
  double zone_power_used_kw(const std::string& zone) const;
  // Per (region, GPU type), sorted, with the reservations active at `now`; reserved_* are
  // those of organization `org` ("" = none).
  std::vector<Offer> offers(int64_t now, const std::string& org = "") const;
  // The holds of the last applied plan: nodes kept for blocked workloads at the queue's head.
  const std::unordered_map<std::string, std::vector<NodeIdx>>& holds() const { return holds_; }

  // Checks every index against a recount from the nodes (tests; O(fleet)). "" = consistent.
  std::string check_invariants() const;

 private:
  friend class Round;
  friend bool apply(const Plan& plan, Cluster& cluster, std::string* error);
  friend Plan schedule(Cluster& cluster, const std::vector<Workload>& pending, const Options& opts);

  struct Node {
    std::string id;
    uint32_t region = 0, zone = 0, domain = 0, slice = 0, pool = 0;
    int gpu_count = 0, gpu_watts = 0;
    uint64_t all_mask = 0, free_mask = 0, spot_mask = 0;
    // popcount(free_mask), popcount(spot_mask): read on every decision, written only when the
    // masks change (set_masks), and a popcount is a library call on baseline x86-64.
    int8_t free_count = 0, spot_count = 0;
    Labels labels;
    std::vector<Taint> taints;
    std::vector<int> ports;  // host ports held by its allocations (one entry per holder)
    NodeState state = NodeState::kReady;
    bool indexed = false;          // counted in the index: ready and not hidden by a hold
    bool hidden = false;           // kept out of the index for the rest of a round (a hold)
    std::vector<uint32_t> allocs;  // allocation slots with GPUs on this node
    bool uses_port(int port) const { return std::find(ports.begin(), ports.end(), port) != ports.end(); }
    int free() const { return free_count; }
    int spot() const { return spot_count; }
    void set_masks(uint64_t free, uint64_t spot);
  };
  struct Alloc {
    std::string workload, org, project;
    Class cls = Class::kOnDemand;
    uint32_t type = 0, region = 0;
    int gpus = 0;
    std::vector<std::pair<NodeIdx, uint64_t>> parts;
    std::vector<int> ports;  // held on every node of parts
    bool live = false;
  };
  struct Domain {
    std::string id;
    uint32_t zone = 0, slice = 0, pool = 0;
    bool own = false;  // a node without a declared domain
    std::vector<NodeIdx> nodes;
    Hist free_hist, reclaim_hist;              // indexed nodes by free, by free + spot
    Hist clean_free_hist, clean_reclaim_hist;  // the same for untainted nodes
    int free = 0, spot = 0, indexed = 0, tainted = 0;
    int ported = 0;  // nodes with a host port in use
  };
  struct Slice {  // a zone's part of a pool
    uint32_t zone = 0, pool = 0;
    Hist free_hist, reclaim_hist;
    int free = 0, spot = 0, max_watts = 0;
    std::vector<uint32_t> domains;
  };
  struct Zone {
    std::string id;
    uint32_t region = 0;
    int64_t budget_w = 0, used_w = 0;  // budget 0 = none
  };
  struct Region {
    std::string id;
    std::vector<uint32_t> zones;
  };
  struct Pool {
    uint32_t region = 0, type = 0;
    Hist free_hist, reclaim_hist;
    Hist clean_free_hist, clean_reclaim_hist;  // untainted nodes: what tolerates no taint can use
    Hist size_hist;  // every node, any state, by GPU count: can it ever fit?
    int free = 0, spot = 0, gpus = 0, indexed_nodes = 0, max_domain_nodes = 0;
    std::vector<uint32_t> slices;
    std::vector<NodeIdx> nodes;     // every node, any state (for explanations)
    BucketIndex domains_by_free;    // domains with an indexed node -> free GPUs
  };

  // Undo log: while a journal is open, each mutation records its inverse, so that a round can
  // try placements on the real structures and put everything back (rollback), or apply() can
  // be all-or-nothing.
  struct Undo {
    enum Kind : uint8_t { kTook, kDropped, kHid } kind;
    uint32_t slot = 0;  // kTook, kDropped
    NodeIdx node = 0;   // kHid
    uint32_t saved = 0; // kDropped: the allocation, in saved_
  };

  // Index maintenance: a node's contribution is taken out, the node changed, put back.
  void unindex(NodeIdx n);
  void index(NodeIdx n);
  uint32_t pool_of(uint32_t region, uint32_t type, bool create);
  uint32_t slice_of(uint32_t zone, uint32_t pool);

  // The mutations the scheduler uses; journaled when a journal is open.
  uint32_t take(Alloc a);            // GPUs must be free on indexed-or-not nodes; returns slot
  void drop(uint32_t slot);          // frees an allocation's GPUs
  void hide(NodeIdx n);              // out of the index until rollback (holds)
  void restore(uint32_t slot, Alloc a);
  void begin_journal();
  void rollback();
  void commit();
  void count_usage(const Alloc& a, int sign);

  int64_t reserved_headroom(uint32_t pool, int64_t now) const;
  // scope/type/region as one map key, built in a buffer that the next call reuses (lookups on
  // the hot path allocate nothing).
  const std::string& usage_key(const std::string& scope, const std::string& type,
                               const std::string& region) const;

  std::vector<Node> nodes_;
  std::vector<Domain> domains_;
  std::vector<Slice> slices_;
  std::vector<Zone> zones_;
  std::vector<Region> regions_;
  std::vector<Pool> pools_;
  std::vector<std::string> types_;
  std::unordered_map<std::string, uint32_t> node_by_id_, domain_by_id_, zone_by_id_,
      region_by_id_, type_by_id_;
  std::unordered_map<uint64_t, uint32_t> pool_by_key_, slice_by_key_;

  std::vector<Alloc> allocs_;
  std::vector<uint32_t> free_slots_, dead_slots_;  // dead: dropped while journaling
  std::unordered_map<std::string, uint32_t> by_workload_;
  int64_t total_gpus_ = 0, allocated_gpus_ = 0;

  std::vector<Reservation> reservations_;
  std::vector<QuotaLimit> quotas_;
  std::unordered_map<std::string, std::vector<uint32_t>> quotas_by_scope_;
  std::unordered_map<std::string, int> usage_;          // quota usage: scope/type/region
  std::unordered_map<std::string, int> reserved_used_;  // org/type/region of reserved work

  std::unordered_map<std::string, std::vector<NodeIdx>> holds_;

  // How many nodes of a pool pass a constrained workload's static filters (zone, size, labels,
  // taints), by pool and constraints: for pending reasons. Cleared when the inventory changes.
  struct FilterCounts {
    int matching = 0, wrong_zone = 0, small = 0, labels = 0, taints = 0;
  };
  std::unordered_map<std::string, FilterCounts> filter_cache_;

  // Sentences the scheduler wrote in earlier rounds (why a workload is pending), by every number
  // and name they contain: at saturation the same questions come back round after round, and a
  // sentence costs more to write than to look up. `check` holds the one name a key cannot (an
  // organization, a workload). Bounded (cleared at 4,096); cleared when the inventory or the
  // quotas change.
  struct Sentence {
    std::string check, text;
    uint8_t code = 0;  // a PendingCode (plan.h), where the sentence implies one
  };
  MemoMap<Sentence> sentences_;

  mutable std::string key_buf_;
  bool journaling_ = false;
  std::vector<Undo> journal_;
  std::vector<Alloc> saved_;  // allocations dropped while journaling
};

}  // namespace aicloud::sched
