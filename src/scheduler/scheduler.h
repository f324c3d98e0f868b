// The scheduler: pending workloads and a Cluster in, a Plan out. A pure library: no I/O, no
// clock, no threads; the server, the tests and the fleet simulator run this same code.
//
// One round, after Nomad's scheduler:
//   1. queue order: class (reserved, on-demand, spot), then priority (higher first), then age;
//   2. admission: quota (on-demand, spot), reservation (reserved work fits its reservation;
//      on-demand work may not take what is reserved for others' reserved work);
//   3. feasibility: GPU type and count, region and zone, labels and taints, host ports (a node
//      where another workload holds one of a service's fixed ports cannot take it), node state
//      (the index only holds ready nodes), the zone's power budget;
//   4. ranking: best fit, so that whole nodes and whole NVLink domains stay free for large
//      jobs. A gang goes into one NVLink domain, else one zone, else spreads over the region,
//      and the placement's reason says which and why;
//   5. preemption: reserved and on-demand work that cannot fit takes GPUs from spot work, the
//      cheapest set of victims (fewest GPUs preempted, then fewest workloads); nothing else is
//      ever preempted;
//   6. backfill: when the first workload of a pool (region, GPU type) cannot be placed, nodes
//      are held for it (see Hold in plan.h) and later, smaller work may only use other nodes;
//   7. everything not placed is pending with a code and a sentence saying why.
// Each placement is applied to the Cluster as the round goes (so that two placements never take
// the same GPU) through an undo log; the round ends by rolling the Cluster back, so schedule()
// leaves it as it found it (but for its memo of sentences, below). apply() then commits the
// plan, all or nothing.
//
// At saturation almost every pending workload fails, round after round, for the same reasons;
// a round is cheap because failing is: within a round, a shape that failed in a pool is not
// searched again (nor any larger one with the same constraints) until a preemption frees GPUs
// there, and the sentence for (constraints, shape, pools, holds) is written once; across
// rounds, the cluster remembers sentences under every number and name they contain
// (Cluster::sentences_), so a sentence is only written again when what it says changed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/cluster.h"
#include "scheduler/plan.h"
#include "scheduler/types.h"

namespace aicloud::sched {

enum class Backfill : uint8_t {
  kHold,    // default: hold nodes for each pool's blocked head; others use the rest
  kStrict,  // nothing behind a pool's blocked head is placed in that pool
  kGreedy,  // place whatever fits, in queue order (large gangs may starve)
};

struct Options {
  int64_t now = 0;  // unix seconds: which reservations are active
  Backfill backfill = Backfill::kHold;
  // Preemption looks at the NVLink domains with the most free GPUs first and stops when no
  // remaining domain can beat the best victim set found, or after this many domains.
  int max_preemption_domains = 64;
  bool record_decision_times = false;  // fills PlanStats::decision_ns (benchmarks)
};

// The queue's order: true if `a` is served before `b`.
bool queue_before(const Workload& a, const Workload& b);

// One round over the pending workloads (any order; workloads already running are reported
// kInvalid). The cluster is used as scratch space and restored before returning.
Plan schedule(Cluster& cluster, const std::vector<Workload>& pending, const Options& opts = {});

// Commits a plan: victims leave the books, placements take their GPUs, holds are kept for the
// next round. All or nothing: if any placement no longer fits (the cluster changed since
// schedule()), nothing changes and it returns false with a message in *error.
bool apply(const Plan& plan, Cluster& cluster, std::string* error = nullptr);

}  // namespace aicloud::sched
