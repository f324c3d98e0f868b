#include "scheduler/scheduler.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <climits>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <type_traits>

namespace aicloud::sched {

const char* to_string(Tier t) {
  switch (t) {
    case Tier::kDomain: return "nvlink_domain";
    case Tier::kZone: return "zone";
    case Tier::kRegion: return "region";
  }
  return "?";
}

const char* to_string(PendingCode c) {
  switch (c) {
    case PendingCode::kInvalid: return "invalid";
    case PendingCode::kInfeasible: return "infeasible";
    case PendingCode::kNoCapacity: return "no_capacity";
    case PendingCode::kPower: return "power_budget";
    case PendingCode::kQuota: return "quota";
    case PendingCode::kNoReservation: return "no_reservation";
    case PendingCode::kReservationFull: return "reservation_full";
    case PendingCode::kReservedCapacity: return "reserved_capacity";
    case PendingCode::kQueued: return "queued";
  }
  return "?";
}

bool queue_before(const Workload& a, const Workload& b) {
  if (a.cls != b.cls) return a.cls < b.cls;
  if (a.priority != b.priority) return a.priority > b.priority;
  if (a.submit_time != b.submit_time) return a.submit_time < b.submit_time;
  if (a.seq != b.seq) return a.seq < b.seq;
  return a.id < b.id;
}

std::vector<NodeGpus> describe(const Cluster& cluster, const Placement& p) {
  std::vector<NodeGpus> out;
  for (auto [n, mask] : p.gpus) out.push_back(NodeGpus{cluster.node_id(n), gpus_of(mask)});
  return out;
}

namespace {

// String building without iostreams: cat("a", 1, b).
void put(std::string& s, const std::string& x) { s += x; }
void put(std::string& s, const char* x) { s += x; }
void put(std::string& s, char x) { s += x; }
template <class T>
  requires std::is_integral_v<T>
void put(std::string& s, T x) { s += std::to_string(x); }
void put(std::string& s, double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", x);
  s += buf;
}
template <class... A>
std::string cat(const A&... a) {
  std::string s;
  (put(s, a), ...);
  return s;
}
const char* plural(long n, const char* one, const char* many) { return n == 1 ? one : many; }

bool tolerated(const std::vector<Toleration>& tolerations, const Taint& t) {
  for (const Toleration& tol : tolerations) {
    if (tol.key.empty()) return true;
    if (tol.key == t.key && (tol.value.empty() || tol.value == t.value)) return true;
  }
  return false;
}

bool has_label(const Labels& labels, const std::string& k, const std::string& v) {
  for (const auto& [lk, lv] : labels) {
    if (lk == k) return lv == v;
  }
  return false;
}

// Picks g of a node's free GPUs: an aligned block when one is free (buddy style, so that the
// node's halves and quarters stay whole for the next job), else the lowest free indices.
uint64_t pick_gpus(uint64_t free, int g, int count) {
  if (std::has_single_bit(static_cast<unsigned>(g)) && g < 64) {
    uint64_t block = (uint64_t(1) << g) - 1;
    for (int start = 0; start + g <= count; start += g) {
      if ((free & (block << start)) == (block << start)) return block << start;
    }
  }
  uint64_t m = 0;
  for (int i = 0; i < g && free; ++i) {
    uint64_t low = free & (~free + 1);
    m |= low;
    free &= free - 1;
  }
  return m;
}

// Cost of a set of victims: GPUs preempted, then workloads preempted. Lower is cheaper.
struct Cost {
  int gpus = 0, count = 0;
  bool operator<(const Cost& o) const { return gpus != o.gpus ? gpus < o.gpus : count < o.count; }
};

}  // namespace

// One scheduling round. A friend of Cluster: it reads the index directly and mutates the
// cluster only through the journaled take/drop/hide.
class Round {
 public:
  Round(Cluster& c, const Options& o, Plan& plan) : c_(c), o_(o), plan_(plan) {}
  void run(const std::vector<Workload>& pending);

 private:
  using Node = Cluster::Node;
  using Domain = Cluster::Domain;
  using Slice = Cluster::Slice;
  using Pool = Cluster::Pool;

  // A workload, resolved against the cluster.
  struct Ask {
    const Workload* w = nullptr;
    uint32_t type = 0;
    int n = 0, g = 0;
    int zone = -1;       // required zone, or -1
    bool plain = false;  // no zone, selector or tolerations: same answer for the same shape
  };
  // A candidate placement.
  struct Choice {
    bool ok = false;
    uint32_t pool = 0;
    Tier tier = Tier::kDomain;
    std::vector<NodeIdx> nodes;
    std::vector<uint32_t> victims;  // allocation slots
    Cost cost;
    int domains = 0, zones = 0;
  };
  // What preempting on one node would cost.
  struct NodeOffer {
    NodeIdx node = 0;
    Cost cost;
    int free = 0;
    std::vector<uint32_t> victims;
  };

  void evaluate(const Workload& w);
  void pend(const Workload& w, PendingCode code, std::string reason);
  bool admit(const Ask& a, uint32_t pool, PendingCode* code, std::string* why);
  int64_t headroom(uint32_t pool);

  bool node_ok(NodeIdx n, const Ask& a) const { return c_.nodes_[n].indexed && static_ok(n, a); }
  bool static_ok(NodeIdx n, const Ask& a) const;
  bool power_ok(const std::vector<NodeIdx>& nodes, int g, const std::vector<uint32_t>& victims);
  bool failed_before(uint32_t pool, const Ask& a, const std::vector<std::vector<int>>& cache) const;

  Choice place(const Ask& a, const std::vector<uint32_t>& pools);
  Choice place_domain(const Ask& a, uint32_t pool);
  Choice place_zone(const Ask& a, uint32_t pool);
  Choice place_region(const Ask& a, uint32_t pool);
  std::vector<NodeIdx> pick_in_domain(uint32_t d, const Ask& a, int k) const;
  int domain_count(uint32_t d, const Ask& a) const;
  // Room for a gang in one zone: nodes that could take g GPUs, by domain.
  struct ZoneRoom {
    uint32_t slice = 0;
    int nodes = 0;
    std::vector<std::pair<int, uint32_t>> domains;  // (nodes, domain)
    int cap = 0;                                    // nodes its power budget allows
  };
  std::vector<ZoneRoom> collect(const Ask& a, uint32_t pool) const;
  std::vector<NodeIdx> pick_in_zone(const ZoneRoom& z, const Ask& a, int k) const;
  Choice finish(uint32_t pool, Tier tier, std::vector<NodeIdx> nodes) const;

  Choice preempt(const Ask& a, const std::vector<uint32_t>& pools);
  Choice preempt_domain(const Ask& a, uint32_t pool);
  Choice preempt_region(const Ask& a, uint32_t pool);
  bool offer(NodeIdx n, int g, NodeOffer* out) const;
  Choice best_of(std::vector<NodeOffer>& offers, int n) const;

  void commit(const Ask& a, Choice& ch);
  std::string placement_reason(const Ask& a, const Choice& ch) const;
  void fail(const Ask& a, const std::vector<uint32_t>& pools);
  std::pair<PendingCode, std::string> explain(const Ask& a, uint32_t pool);
  void add_hold_note(const Ask& a, uint32_t pool, std::string* reason) const;
  bool make_hold(const Ask& a, uint32_t pool);

  // A name's index: a short list is faster to compare than a string to hash.
  static uint32_t find(const std::vector<std::string>& names, const std::unordered_map<std::string, uint32_t>& index,
                       const std::string& name) {
    if (names.size() <= 8) {
      for (uint32_t i = 0; i < names.size(); ++i) {
        if (names[i] == name) return i;
      }
      return UINT32_MAX;
    }
    auto it = index.find(name);
    return it == index.end() ? UINT32_MAX : it->second;
  }
  const std::string& type_name(const Ask& a) const { return c_.types_[a.type]; }
  const std::string& region_name(uint32_t pool) const { return c_.regions_[c_.pools_[pool].region].id; }

  Cluster& c_;
  const Options& o_;
  Plan& plan_;

  std::vector<uint32_t> regions_sorted_;
  std::vector<std::string> region_names_;  // by index
  // Active reservations per pool: (org usage key, GPUs reserved).
  std::vector<std::vector<std::pair<std::string, int>>> pool_resv_;
  std::unordered_map<std::string, int> resv_total_;
  std::vector<std::string> hold_owner_;   // per pool: the workload nodes are held for this round
  std::vector<int> held_nodes_, held_free_, held_spot_;
  std::vector<std::string> blocked_by_;   // strict mode: the pool's blocked head
  std::vector<std::vector<int>> fail_, fail_preempt_;  // per pool, per g: fewest nodes that failed
  std::unordered_map<uint64_t, std::pair<PendingCode, std::string>> explained_;  // plain shapes
  // Set while evaluating one workload: a zone's power budget refused a candidate.
  int power_zone_ = -1;
  int64_t power_need_w_ = 0;
};

void Round::run(const std::vector<Workload>& pending) {
  size_t np = c_.pools_.size();
  pool_resv_.assign(np, {});
  hold_owner_.assign(np, "");
  held_nodes_.assign(np, 0);
  held_free_.assign(np, 0);
  held_spot_.assign(np, 0);
  blocked_by_.assign(np, "");
  fail_.assign(np, std::vector<int>(65, INT_MAX));
  fail_preempt_.assign(np, std::vector<int>(65, INT_MAX));
  for (uint32_t r = 0; r < c_.regions_.size(); ++r) {
    regions_sorted_.push_back(r);
    region_names_.push_back(c_.regions_[r].id);
  }
  std::sort(regions_sorted_.begin(), regions_sorted_.end(),
            [&](uint32_t a, uint32_t b) { return c_.regions_[a].id < c_.regions_[b].id; });
  for (const Reservation& r : c_.reservations_) {
    if (!r.approved || r.start > o_.now || o_.now >= r.end || r.gpus <= 0) continue;
    auto rit = c_.region_by_id_.find(r.region);
    auto tit = c_.type_by_id_.find(r.gpu_type);
    if (rit == c_.region_by_id_.end() || tit == c_.type_by_id_.end()) continue;
    uint32_t p = c_.pool_of(rit->second, tit->second, false);
    if (p == UINT32_MAX) continue;
    std::string key = c_.usage_key(r.org, r.gpu_type, r.region);
    int& total = resv_total_[key];
    if (total == 0) pool_resv_[p].emplace_back(key, 0);
    total += r.gpus;
  }
  for (auto& v : pool_resv_) {
    for (auto& [key, n] : v) n = resv_total_[key];
  }

  // Sorted on integer keys first: the queue is sorted every round.
  struct Key {
    int cls, neg_priority;
    int64_t submit;
    uint64_t seq;
    const Workload* w;
  };
  std::vector<Key> keys;
  keys.reserve(pending.size());
  for (const Workload& w : pending) keys.push_back(Key{static_cast<int>(w.cls), -w.priority, w.submit_time, w.seq, &w});
  std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
    if (a.cls != b.cls) return a.cls < b.cls;
    if (a.neg_priority != b.neg_priority) return a.neg_priority < b.neg_priority;
    if (a.submit != b.submit) return a.submit < b.submit;
    if (a.seq != b.seq) return a.seq < b.seq;
    return a.w->id < b.w->id;
  });
  std::vector<const Workload*> order;
  order.reserve(keys.size());
  for (const Key& k : keys) order.push_back(k.w);
  if (o_.record_decision_times) plan_.stats.decision_ns.reserve(order.size());
  for (const Workload* w : order) {
    if (o_.record_decision_times) {
      auto t0 = std::chrono::steady_clock::now();
      evaluate(*w);
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
      plan_.stats.decision_ns.push_back(static_cast<uint32_t>(std::min<int64_t>(ns, UINT32_MAX)));
    } else {
      evaluate(*w);
    }
  }
}

void Round::pend(const Workload& w, PendingCode code, std::string reason) {
  plan_.pending.push_back(Pending{w.id, code, std::move(reason)});
  ++plan_.stats.pending;
}

// ---- Admission -------------------------------------------------------------------------------

int64_t Round::headroom(uint32_t pool) {
  int64_t h = 0;
  for (const auto& [key, n] : pool_resv_[pool]) {
    auto it = c_.reserved_used_.find(key);
    h += std::max<int64_t>(0, n - (it == c_.reserved_used_.end() ? 0 : it->second));
  }
  return h;
}

bool Round::admit(const Ask& a, uint32_t pool, PendingCode* code, std::string* why) {
  const Workload& w = *a.w;
  const std::string& type = type_name(a);
  const std::string& region = region_name(pool);
  int gpus = w.gpus();
  if (w.cls == Class::kReserved) {
    const std::string& key = c_.usage_key(w.org, type, region);
    auto rt = resv_total_.find(key);
    if (rt == resv_total_.end()) {
      *code = PendingCode::kNoReservation;
      *why = cat("no active reservation of ", type, " in ", region, " for ", w.org);
      return false;
    }
    auto ru = c_.reserved_used_.find(key);
    int used = ru == c_.reserved_used_.end() ? 0 : ru->second;
    if (used + gpus > rt->second) {
      *code = PendingCode::kReservationFull;
      *why = cat("reservation full: ", w.org, " has ", rt->second, " ", type, " GPUs reserved in ", region,
                 ", its reserved workloads hold ", used, " and this one needs ", gpus);
      return false;
    }
    return true;  // reserved work is bounded by its reservation, not by quotas
  }
  for (const std::string* scope : {&w.org, &w.project}) {
    if (scope->empty()) continue;
    auto qs = c_.quotas_by_scope_.find(*scope);
    if (qs == c_.quotas_by_scope_.end()) continue;
    for (uint32_t qi : qs->second) {
      const QuotaLimit& q = c_.quotas_[qi];
      if ((!q.gpu_type.empty() && q.gpu_type != type) || (!q.region.empty() && q.region != region)) continue;
      auto u = c_.usage_.find(c_.usage_key(*scope, q.gpu_type, q.region));
      int used = u == c_.usage_.end() ? 0 : u->second;
      if (used + gpus > q.max_gpus) {
        *code = PendingCode::kQuota;
        *why = cat("over quota: ", *scope, " may hold ", q.max_gpus, " ",
                   q.gpu_type.empty() ? std::string() : q.gpu_type + " ", "GPUs",
                   q.region.empty() ? std::string() : " in " + q.region, ", holds ", used,
                   " and this workload needs ", gpus);
        return false;
      }
    }
  }
  if (w.cls == Class::kOnDemand) {
    const Pool& p = c_.pools_[pool];
    int64_t h = headroom(pool);
    int64_t avail = p.free + p.spot + held_free_[pool] + held_spot_[pool];
    if (h > 0 && avail >= gpus && avail - gpus < h) {
      *code = PendingCode::kReservedCapacity;
      *why = cat("waiting behind reservations: of the ", avail, " ", type, " GPUs in ", region,
                 " that are free or run spot work, ", h, " are reserved for reserved workloads");
      return false;
    }
  }
  return true;
}

// ---- Feasibility -----------------------------------------------------------------------------

bool Round::static_ok(NodeIdx n, const Ask& a) const {
  const Node& node = c_.nodes_[n];
  if (node.gpu_count < a.g) return false;
  if (a.zone >= 0 && node.zone != static_cast<uint32_t>(a.zone)) return false;
  for (const auto& [k, v] : a.w->node_selector) {
    if (!has_label(node.labels, k, v)) return false;
  }
  for (const Taint& t : node.taints) {
    if (!tolerated(a.w->tolerations, t)) return false;
  }
  return true;
}

// The zones' power budgets, with what the victims would give back.
bool Round::power_ok(const std::vector<NodeIdx>& nodes, int g, const std::vector<uint32_t>& victims) {
  std::vector<std::pair<uint32_t, int64_t>> delta;  // zone -> watts
  auto add = [&](uint32_t z, int64_t w) {
    for (auto& [dz, dw] : delta) {
      if (dz == z) {
        dw += w;
        return;
      }
    }
    delta.emplace_back(z, w);
  };
  for (NodeIdx n : nodes) add(c_.nodes_[n].zone, int64_t(g) * c_.nodes_[n].gpu_watts);
  for (uint32_t v : victims) {
    for (auto [n, mask] : c_.allocs_[v].parts) add(c_.nodes_[n].zone, -int64_t(std::popcount(mask)) * c_.nodes_[n].gpu_watts);
  }
  for (auto [z, w] : delta) {
    const Cluster::Zone& zone = c_.zones_[z];
    if (zone.budget_w > 0 && w > 0 && zone.used_w + w > zone.budget_w) {
      power_zone_ = static_cast<int>(z);
      power_need_w_ = w;
      return false;
    }
  }
  return true;
}

bool Round::failed_before(uint32_t pool, const Ask& a, const std::vector<std::vector<int>>& cache) const {
  if (!a.plain) return false;
  for (int k = 1; k <= a.g; ++k) {
    if (cache[pool][k] <= a.n) return true;  // fewer or smaller GPUs per node already failed
  }
  return false;
}

// ---- Placement without preemption ------------------------------------------------------------

// A gang's nodes: one NVLink domain, else one zone, else the region; every region allowed
// tries a tier before any region tries the next.
Round::Choice Round::place(const Ask& a, const std::vector<uint32_t>& pools) {
  for (Tier tier : {Tier::kDomain, Tier::kZone, Tier::kRegion}) {
    if (tier != Tier::kDomain && a.n == 1) break;
    for (uint32_t p : pools) {
      const Pool& pool = c_.pools_[p];
      if (pool.free < a.n * a.g || pool.free_hist.at_least(a.g) < a.n) continue;
      if (failed_before(p, a, fail_)) continue;
      Choice ch = tier == Tier::kDomain ? place_domain(a, p) : tier == Tier::kZone ? place_zone(a, p) : place_region(a, p);
      if (ch.ok) return ch;
    }
  }
  if (a.plain) {
    for (uint32_t p : pools) fail_[p][a.g] = std::min(fail_[p][a.g], a.n);
  }
  return {};
}

// Best fit: domains from the fewest free GPUs that could hold the gang upward; the first whose
// histogram has n nodes with g free (and whose nodes pass every filter) wins. So partly used
// domains fill up first and whole domains stay whole.
Round::Choice Round::place_domain(const Ask& a, uint32_t p) {
  const Pool& pool = c_.pools_[p];
  if (a.n > pool.max_domain_nodes) return {};
  const BucketIndex& b = pool.domains_by_free;
  for (int f = a.n * a.g; f <= b.max_key(); ++f) {
    for (uint32_t d : b.bucket(f)) {
      const Domain& dom = c_.domains_[d];
      if (a.zone >= 0 && dom.zone != static_cast<uint32_t>(a.zone)) continue;
      if (dom.free_hist.at_least(a.g) < a.n) continue;
      std::vector<NodeIdx> nodes = pick_in_domain(d, a, a.n);
      if (static_cast<int>(nodes.size()) < a.n) continue;
      if (!power_ok(nodes, a.g, {})) continue;
      Choice ch;
      ch.ok = true;
      ch.pool = p;
      ch.tier = Tier::kDomain;
      ch.nodes = std::move(nodes);
      ch.domains = ch.zones = 1;
      return ch;
    }
  }
  return {};
}

// The k eligible nodes of a domain with the fewest free GPUs (at least g): best fit.
std::vector<NodeIdx> Round::pick_in_domain(uint32_t d, const Ask& a, int k) const {
  std::vector<std::pair<int, NodeIdx>> cand;
  for (NodeIdx n : c_.domains_[d].nodes) {
    const Node& node = c_.nodes_[n];
    if (node.indexed && node.free() >= a.g && static_ok(n, a)) cand.emplace_back(node.free(), n);
  }
  if (static_cast<int>(cand.size()) > k) {
    std::partial_sort(cand.begin(), cand.begin() + k, cand.end());
    cand.resize(k);
  } else {
    std::sort(cand.begin(), cand.end());
  }
  std::vector<NodeIdx> out;
  for (auto [f, n] : cand) out.push_back(n);
  return out;
}

// Nodes of a domain that could take g GPUs each. The histogram is exact unless a filter that it
// does not know about applies (labels, taints).
int Round::domain_count(uint32_t d, const Ask& a) const {
  const Domain& dom = c_.domains_[d];
  if (dom.indexed == 0) return 0;
  int upper = dom.free_hist.at_least(a.g);
  if (upper == 0 || (a.w->node_selector.empty() && dom.tainted == 0)) return upper;
  int k = 0;
  for (NodeIdx n : dom.nodes) k += node_ok(n, a) && c_.nodes_[n].free() >= a.g;
  return k;
}

namespace {

// Covers k items from groups with as few groups as possible: the largest groups first, and the
// last one best fit (the smallest group that covers the rest). Returns (group, count) pairs.
std::vector<std::pair<uint32_t, int>> cover(std::vector<std::pair<int, uint32_t>> groups, int k) {
  std::sort(groups.begin(), groups.end(), [](auto& x, auto& y) { return x.first > y.first; });
  std::vector<std::pair<uint32_t, int>> out;
  size_t i = 0;
  while (k > 0 && i < groups.size()) {
    size_t j = i;
    while (j + 1 < groups.size() && groups[j + 1].first >= k) ++j;
    if (groups[j].first >= k) {
      out.emplace_back(groups[j].second, k);
      return out;
    }
    out.emplace_back(groups[i].second, groups[i].first);
    k -= groups[i].first;
    ++i;
  }
  if (k > 0) out.clear();
  return out;
}

}  // namespace

// The domains of a pool with room for at least one node of the gang, grouped by zone. Found
// through the domain buckets, so domains with fewer than g free GPUs are never looked at.
std::vector<Round::ZoneRoom> Round::collect(const Ask& a, uint32_t p) const {
  std::vector<ZoneRoom> out;
  const BucketIndex& b = c_.pools_[p].domains_by_free;
  for (int f = a.g; f <= b.max_key(); ++f) {
    for (uint32_t d : b.bucket(f)) {
      const Domain& dom = c_.domains_[d];
      if (a.zone >= 0 && dom.zone != static_cast<uint32_t>(a.zone)) continue;
      int e = domain_count(d, a);
      if (e == 0) continue;
      auto it = std::find_if(out.begin(), out.end(), [&](const ZoneRoom& z) { return z.slice == dom.slice; });
      if (it == out.end()) {
        out.push_back(ZoneRoom{dom.slice, 0, {}});
        it = out.end() - 1;
      }
      it->nodes += e;
      it->domains.emplace_back(e, d);
    }
  }
  // A zone's power budget caps how many of the gang's nodes it can take.
  for (ZoneRoom& z : out) {
    const Slice& sl = c_.slices_[z.slice];
    const Cluster::Zone& zone = c_.zones_[sl.zone];
    z.cap = z.nodes;
    if (zone.budget_w > 0 && sl.max_watts > 0) {
      int64_t cap = std::max<int64_t>(0, zone.budget_w - zone.used_w) / (int64_t(a.g) * sl.max_watts);
      z.cap = static_cast<int>(std::min<int64_t>(z.nodes, cap));
    }
  }
  return out;
}

// k nodes of one zone: as few domains as possible, best fit inside each.
std::vector<NodeIdx> Round::pick_in_zone(const ZoneRoom& z, const Ask& a, int k) const {
  std::vector<NodeIdx> out;
  for (auto [d, take] : cover(z.domains, k)) {
    auto nodes = pick_in_domain(d, a, take);
    out.insert(out.end(), nodes.begin(), nodes.end());
  }
  return out;
}

Round::Choice Round::finish(uint32_t p, Tier tier, std::vector<NodeIdx> nodes) const {
  Choice ch;
  ch.ok = true;
  ch.pool = p;
  ch.tier = tier;
  std::vector<uint32_t> doms, zones;
  for (NodeIdx n : nodes) {
    doms.push_back(c_.nodes_[n].domain);
    zones.push_back(c_.nodes_[n].zone);
  }
  std::sort(doms.begin(), doms.end());
  std::sort(zones.begin(), zones.end());
  ch.domains = static_cast<int>(std::unique(doms.begin(), doms.end()) - doms.begin());
  ch.zones = static_cast<int>(std::unique(zones.begin(), zones.end()) - zones.begin());
  ch.nodes = std::move(nodes);
  return ch;
}

// One zone: the zone with the fewest free GPUs that can take the whole gang (best fit).
Round::Choice Round::place_zone(const Ask& a, uint32_t p) {
  std::vector<ZoneRoom> zones = collect(a, p);
  std::sort(zones.begin(), zones.end(),
            [&](const ZoneRoom& x, const ZoneRoom& y) { return c_.slices_[x.slice].free < c_.slices_[y.slice].free; });
  for (const ZoneRoom& z : zones) {
    if (z.nodes < a.n) continue;
    if (z.cap < a.n) {
      power_zone_ = static_cast<int>(c_.slices_[z.slice].zone);
      power_need_w_ = int64_t(a.n) * a.g * c_.slices_[z.slice].max_watts;
      continue;
    }
    std::vector<NodeIdx> nodes = pick_in_zone(z, a, a.n);
    if (static_cast<int>(nodes.size()) < a.n || !power_ok(nodes, a.g, {})) continue;
    return finish(p, Tier::kZone, std::move(nodes));
  }
  return {};
}

// Spread over the region: as few zones as possible (each capped by its power budget), and in
// each zone as few domains as possible.
Round::Choice Round::place_region(const Ask& a, uint32_t p) {
  std::vector<ZoneRoom> zones = collect(a, p);
  std::vector<std::pair<int, uint32_t>> groups;
  for (uint32_t i = 0; i < zones.size(); ++i) {
    if (zones[i].cap > 0) groups.emplace_back(zones[i].cap, i);
    if (zones[i].cap < zones[i].nodes) {
      power_zone_ = static_cast<int>(c_.slices_[zones[i].slice].zone);
      power_need_w_ = int64_t(zones[i].nodes - zones[i].cap) * a.g * c_.slices_[zones[i].slice].max_watts;
    }
  }
  std::vector<NodeIdx> nodes;
  for (auto [i, take] : cover(std::move(groups), a.n)) {
    auto more = pick_in_zone(zones[i], a, take);
    nodes.insert(nodes.end(), more.begin(), more.end());
  }
  if (static_cast<int>(nodes.size()) < a.n || !power_ok(nodes, a.g, {})) return {};
  return finish(p, Tier::kRegion, std::move(nodes));
}

// ---- Preemption ------------------------------------------------------------------------------

// The cheapest spot work on node n whose GPUs there, with the free ones, make g.
bool Round::offer(NodeIdx n, int g, NodeOffer* out) const {
  const Node& node = c_.nodes_[n];
  int f = node.free();
  out->node = n;
  out->free = f;
  out->victims.clear();
  out->cost = {};
  if (f >= g) return true;
  int need = g - f;
  if (node.spot() < need) return false;
  struct Item {
    uint32_t slot;
    int here, total;
  };
  std::vector<Item> items;
  for (uint32_t slot : node.allocs) {
    const Cluster::Alloc& al = c_.allocs_[slot];
    if (al.cls != Class::kSpot) continue;
    for (auto [pn, mask] : al.parts) {
      if (pn == n) items.push_back(Item{slot, std::popcount(mask), al.gpus});
    }
  }
  if (items.size() <= 8) {  // every subset: exact
    uint32_t best = 0;
    Cost bc{INT_MAX, INT_MAX};
    for (uint32_t s = 1; s < (1u << items.size()); ++s) {
      int here = 0;
      Cost c;
      for (size_t i = 0; i < items.size(); ++i) {
        if (s & (1u << i)) {
          here += items[i].here;
          c.gpus += items[i].total;
          ++c.count;
        }
      }
      if (here >= need && c < bc) {
        bc = c;
        best = s;
      }
    }
    if (best == 0) return false;
    for (size_t i = 0; i < items.size(); ++i) {
      if (best & (1u << i)) out->victims.push_back(items[i].slot);
    }
    out->cost = bc;
    return true;
  }
  // Many small spot workloads on one big node: the ones that waste least, greedily.
  std::sort(items.begin(), items.end(), [](const Item& x, const Item& y) {
    return x.total - x.here != y.total - y.here ? x.total - x.here < y.total - y.here : x.here > y.here;
  });
  int got = 0;
  for (const Item& it : items) {
    if (got >= need) break;
    got += it.here;
    out->victims.push_back(it.slot);
    out->cost.gpus += it.total;
    ++out->cost.count;
  }
  return got >= need;
}

// The n cheapest offers, victims counted once even when a spot gang spans several of them.
Round::Choice Round::best_of(std::vector<NodeOffer>& offers, int n) const {
  Choice ch;
  if (static_cast<int>(offers.size()) < n) return ch;
  auto cheaper = [](const NodeOffer& x, const NodeOffer& y) {
    if (x.cost.gpus != y.cost.gpus) return x.cost < y.cost;
    if (x.cost.count != y.cost.count) return x.cost.count < y.cost.count;
    return x.free < y.free;  // then best fit
  };
  std::partial_sort(offers.begin(), offers.begin() + n, offers.end(), cheaper);
  for (int i = 0; i < n; ++i) {
    ch.nodes.push_back(offers[i].node);
    ch.victims.insert(ch.victims.end(), offers[i].victims.begin(), offers[i].victims.end());
  }
  std::sort(ch.victims.begin(), ch.victims.end());
  ch.victims.erase(std::unique(ch.victims.begin(), ch.victims.end()), ch.victims.end());
  for (uint32_t v : ch.victims) {
    ch.cost.gpus += c_.allocs_[v].gpus;
    ++ch.cost.count;
  }
  ch.ok = true;
  return ch;
}

Round::Choice Round::preempt(const Ask& a, const std::vector<uint32_t>& pools) {
  Choice best;
  for (uint32_t p : pools) {
    const Pool& pool = c_.pools_[p];
    if (pool.free + pool.spot < a.n * a.g || pool.reclaim_hist.at_least(a.g) < a.n) continue;
    if (failed_before(p, a, fail_preempt_)) continue;
    Choice ch = preempt_domain(a, p);
    if (!ch.ok && a.n > 1) ch = preempt_region(a, p);
    if (ch.ok && (!best.ok || ch.tier < best.tier || (ch.tier == best.tier && ch.cost < best.cost))) best = std::move(ch);
  }
  if (!best.ok && a.plain) {
    for (uint32_t p : pools) fail_preempt_[p][a.g] = std::min(fail_preempt_[p][a.g], a.n);
  }
  return best;
}

// Domains with the most free GPUs first: for a domain with f free, the gang needs at least
// n*g - f GPUs from victims, so the search stops once that bound reaches the best set found.
Round::Choice Round::preempt_domain(const Ask& a, uint32_t p) {
  const Pool& pool = c_.pools_[p];
  if (a.n > pool.max_domain_nodes) return {};
  const BucketIndex& b = pool.domains_by_free;
  Choice best;
  int examined = 0;
  int need = a.n * a.g;
  std::vector<NodeOffer> offers;
  for (int f = b.max_key(); f >= 0; --f) {
    if (best.ok && need - f >= best.cost.gpus) break;
    for (uint32_t d : b.bucket(f)) {
      const Domain& dom = c_.domains_[d];
      if (a.zone >= 0 && dom.zone != static_cast<uint32_t>(a.zone)) continue;
      if (dom.reclaim_hist.at_least(a.g) < a.n) continue;
      if (++examined > o_.max_preemption_domains) return best;
      offers.clear();
      NodeOffer o;
      for (NodeIdx n : dom.nodes) {
        if (node_ok(n, a) && offer(n, a.g, &o)) offers.push_back(o);
      }
      Choice ch = best_of(offers, a.n);
      if (!ch.ok || (best.ok && !(ch.cost < best.cost))) continue;
      if (!power_ok(ch.nodes, a.g, ch.victims)) continue;
      ch.pool = p;
      ch.tier = Tier::kDomain;
      ch.domains = ch.zones = 1;
      best = std::move(ch);
    }
  }
  return best;
}

// A gang that no domain can take even with preemption: the cheapest n nodes of one zone, else
// of the region. This looks at every node with reclaimable GPUs in the pool, which only big
// reserved or on-demand gangs in a full pool ever need.
Round::Choice Round::preempt_region(const Ask& a, uint32_t p) {
  const Pool& pool = c_.pools_[p];
  std::vector<std::vector<NodeOffer>> by_slice;
  std::vector<uint32_t> slice_ids;
  NodeOffer o;
  for (uint32_t s : pool.slices) {
    const Slice& sl = c_.slices_[s];
    if (a.zone >= 0 && sl.zone != static_cast<uint32_t>(a.zone)) continue;
    if (sl.reclaim_hist.at_least(a.g) == 0) continue;
    std::vector<NodeOffer> offers;
    for (uint32_t d : sl.domains) {
      if (c_.domains_[d].reclaim_hist.at_least(a.g) == 0) continue;
      for (NodeIdx n : c_.domains_[d].nodes) {
        if (node_ok(n, a) && offer(n, a.g, &o)) offers.push_back(o);
      }
    }
    by_slice.push_back(std::move(offers));
    slice_ids.push_back(s);
  }
  Choice best;
  for (auto& offers : by_slice) {
    Choice ch = best_of(offers, a.n);
    if (ch.ok && (!best.ok || ch.cost < best.cost) && power_ok(ch.nodes, a.g, ch.victims)) best = std::move(ch);
  }
  if (best.ok) {
    best.tier = Tier::kZone;
    best.zones = 1;
  } else {
    std::vector<NodeOffer> all;
    for (auto& offers : by_slice) all.insert(all.end(), offers.begin(), offers.end());
    best = best_of(all, a.n);
    if (!best.ok || !power_ok(best.nodes, a.g, best.victims)) return {};
    best.tier = Tier::kRegion;
    std::vector<uint32_t> zs;
    for (NodeIdx n : best.nodes) zs.push_back(c_.nodes_[n].zone);
    std::sort(zs.begin(), zs.end());
    best.zones = static_cast<int>(std::unique(zs.begin(), zs.end()) - zs.begin());
  }
  best.pool = p;
  std::vector<uint32_t> doms;
  for (NodeIdx n : best.nodes) doms.push_back(c_.nodes_[n].domain);
  std::sort(doms.begin(), doms.end());
  best.domains = static_cast<int>(std::unique(doms.begin(), doms.end()) - doms.begin());
  return best;
}

// ---- Outcomes --------------------------------------------------------------------------------

std::string Round::placement_reason(const Ask& a, const Choice& ch) const {
  const std::string& type = type_name(a);
  std::string s;
  if (a.n == 1) {
    const Node& node = c_.nodes_[ch.nodes[0]];
    const Domain& dom = c_.domains_[node.domain];
    s = cat("best fit on node ", node.id, dom.own ? std::string() : " in NVLink domain " + dom.id);
    if (ch.victims.empty()) s += cat(" (leaves ", node.free() - a.g, " of its ", node.gpu_count, " GPUs free)");
  } else if (ch.tier == Tier::kDomain) {
    s = cat("one NVLink domain ", c_.domains_[c_.nodes_[ch.nodes[0]].domain].id, ": ", a.n, " nodes x ", a.g, " ", type);
  } else if (ch.tier == Tier::kZone) {
    s = cat("one zone ", c_.zones_[c_.nodes_[ch.nodes[0]].zone].id, " over ", ch.domains, " NVLink domains: no domain had ",
            a.n, " nodes with ", a.g, " ", type, " GPUs ", ch.victims.empty() ? "free" : "to reclaim");
  } else {
    s = cat("spread over ", ch.zones, " ", plural(ch.zones, "zone", "zones"), " and ", ch.domains,
            " NVLink domains of ", region_name(ch.pool), ": no domain or zone had ", a.n, " nodes with ", a.g, " ", type,
            " GPUs ", ch.victims.empty() ? "free" : "to reclaim");
  }
  if (!ch.victims.empty()) {
    s += cat("; preempts ", ch.cost.count, " spot ", plural(ch.cost.count, "workload", "workloads"), " (", ch.cost.gpus,
             " GPUs)");
  }
  return s;
}

void Round::commit(const Ask& a, Choice& ch) {
  const Workload& w = *a.w;
  // Checked here rather than for every pending workload: it costs a hash lookup, and a
  // running workload that is also queued is the caller's bug, rare by construction.
  if (c_.is_running(w.id)) return pend(w, PendingCode::kInvalid, "it already holds GPUs");
  Placement pl;
  pl.workload = w.id;
  pl.org = w.org;
  pl.project = w.project;
  pl.cls = w.cls;
  pl.tier = ch.tier;
  pl.reason = placement_reason(a, ch);
  for (uint32_t v : ch.victims) {
    const std::string& victim = c_.allocs_[v].workload;
    pl.preempts.push_back(victim);
    plan_.preemptions.push_back(Preemption{
        victim, w.id, cat("preempted by ", to_string(w.cls), " workload ", w.id, " (", w.gpus(), " ", type_name(a), " GPUs)")});
    ++plan_.stats.preempted;
  }
  for (uint32_t v : ch.victims) c_.drop(v);
  if (!ch.victims.empty()) {  // victims may free more than this gang takes
    std::fill(fail_[ch.pool].begin(), fail_[ch.pool].end(), INT_MAX);
    std::fill(fail_preempt_[ch.pool].begin(), fail_preempt_[ch.pool].end(), INT_MAX);
  }
  Cluster::Alloc al;
  al.workload = w.id;
  al.org = w.org;
  al.project = w.project;
  al.cls = w.cls;
  for (NodeIdx n : ch.nodes) {
    const Node& node = c_.nodes_[n];
    al.parts.emplace_back(n, pick_gpus(node.free_mask, a.g, node.gpu_count));
  }
  pl.gpus = al.parts;
  c_.take(std::move(al));
  plan_.placements.push_back(std::move(pl));
  ++plan_.stats.placed;
}

void Round::add_hold_note(const Ask& a, uint32_t p, std::string* reason) const {
  if (hold_owner_[p].empty() || hold_owner_[p] == a.w->id) return;
  *reason += cat("; ", held_nodes_[p], " ", plural(held_nodes_[p], "node is", "nodes are"), " held for ", hold_owner_[p],
                 ", first in line");
}

// Why a workload that passed admission did not fit in a pool. Cheap, since most of a saturated
// queue ends here every round: a plain shape's sentence is built once per round, and the
// filter counts of a constrained workload (which need a look at every node of the pool) are
// kept in the cluster until its inventory changes.
std::pair<PendingCode, std::string> Round::explain(const Ask& a, uint32_t p) {
  uint64_t plain_key = (uint64_t(p) << 40) | (uint64_t(a.n) << 8) | uint64_t(a.g);
  if (a.plain) {
    auto it = explained_.find(plain_key);
    if (it != explained_.end()) return it->second;
  }
  const Pool& pool = c_.pools_[p];
  const std::string& type = type_name(a);
  const std::string& region = region_name(p);
  std::string shape = a.n == 1 ? cat(a.g, " ", type, " GPUs on one node") : cat(a.n, " nodes with ", a.g, " ", type, " GPUs each");
  std::pair<PendingCode, std::string> out;
  if (a.plain) {
    int k = pool.size_hist.at_least(a.g);
    if (k < a.n) {
      out = {PendingCode::kInfeasible, cat("it can never fit: it needs ", shape, " and ", region, " has ", k, " ", type, " ",
                                           plural(k, "node", "nodes"), " with ", a.g, " or more GPUs")};
    } else {
      std::string s = cat("no capacity of ", type, " in ", region, ": it needs ", shape, "; ", pool.free_hist.at_least(a.g),
                          " ready nodes have ", a.g, " free (", pool.free, " GPUs free");
      if (pool.spot > 0) s += cat(", ", pool.spot, " run spot work");
      s += ")";
      int down = static_cast<int>(pool.nodes.size()) - pool.indexed_nodes - held_nodes_[p];
      if (down > 0) s += cat("; ", down, " ", plural(down, "node is", "nodes are"), " not ready, cordoned or draining");
      out = {PendingCode::kNoCapacity, std::move(s)};
    }
    add_hold_note(a, p, &out.second);
    explained_.emplace(plain_key, out);
    return out;
  }
  std::string key = cat(p, '|', a.g, '|', a.zone, '|');
  for (const auto& [k, v] : a.w->node_selector) key += cat(k, '=', v, ',');
  key += '|';
  for (const Toleration& t : a.w->tolerations) key += cat(t.key, '=', t.value, ',');
  auto it = c_.filter_cache_.find(key);
  if (it == c_.filter_cache_.end()) {
    Cluster::FilterCounts f;
    for (NodeIdx n : pool.nodes) {
      const Node& node = c_.nodes_[n];
      bool lab = true, tol = true;
      for (const auto& [k, v] : a.w->node_selector) lab = lab && has_label(node.labels, k, v);
      for (const Taint& t : node.taints) tol = tol && tolerated(a.w->tolerations, t);
      if (a.zone >= 0 && node.zone != static_cast<uint32_t>(a.zone)) ++f.wrong_zone;
      else if (node.gpu_count < a.g) ++f.small;
      else if (!lab) ++f.labels;
      else if (!tol) ++f.taints;
      else ++f.matching;
    }
    it = c_.filter_cache_.emplace(std::move(key), f).first;
  }
  const Cluster::FilterCounts& f = it->second;
  if (f.matching < a.n) {
    std::string filtered;
    auto note = [&](int k, const char* what) {
      if (k > 0) filtered += cat(filtered.empty() ? "" : ", ", k, " ", what);
    };
    note(f.wrong_zone, "in other zones");
    note(f.small, "too small");
    note(f.labels, "without the selected labels");
    note(f.taints, "with taints it does not tolerate");
    out = {PendingCode::kInfeasible, cat("it can never fit: it needs ", shape, " and ", f.matching, " of ", pool.nodes.size(),
                                         " ", type, " nodes in ", region, " match",
                                         filtered.empty() ? std::string() : " (" + filtered + ")")};
  } else {
    out = {PendingCode::kNoCapacity, cat("no capacity: it needs ", shape, "; ", f.matching, " ", type, " nodes in ", region,
                                         " match its zone, labels and taints, and too few of them have ", a.g,
                                         " free now")};
    add_hold_note(a, p, &out.second);
  }
  return out;
}

void Round::fail(const Ask& a, const std::vector<uint32_t>& pools) {
  const Workload& w = *a.w;
  std::pair<PendingCode, std::string> out = explain(a, pools[0]);
  for (size_t i = 1; i < pools.size(); ++i) {
    auto [c, r] = explain(a, pools[i]);
    if (c != PendingCode::kInfeasible) out.first = c;
    out.second += "; ";
    out.second += r;
  }
  if (out.first != PendingCode::kInfeasible && power_zone_ >= 0) {
    const Cluster::Zone& z = c_.zones_[power_zone_];
    out.first = PendingCode::kPower;
    out.second = cat("power budget: zone ", z.id, " uses ", z.used_w / 1000.0, " of ", z.budget_w / 1000.0,
                     " kW and this workload needs ", power_need_w_ / 1000.0, " kW more");
  }
  if (out.first == PendingCode::kNoCapacity) {
    for (uint32_t p : pools) {
      if (o_.backfill == Backfill::kStrict && blocked_by_[p].empty()) blocked_by_[p] = w.id;
      if (o_.backfill == Backfill::kHold && hold_owner_[p].empty() && make_hold(a, p)) {
        out.second += cat("; first in line: ", held_nodes_[p], " ", plural(held_nodes_[p], "node is", "nodes are"),
                          " held for it");
        explained_.clear();  // later reasons mention the hold
        break;
      }
    }
  }
  pend(w, out.first, std::move(out.second));
}

// Nodes for a blocked head: its hold from the last round if still good (so that they keep
// draining toward it), else the eligible nodes with the most free GPUs, in one domain if the
// gang fits one, else in one zone, else across the region.
bool Round::make_hold(const Ask& a, uint32_t p) {
  const Pool& pool = c_.pools_[p];
  std::vector<NodeIdx> chosen;
  auto prev = c_.holds_.find(a.w->id);
  if (prev != c_.holds_.end()) {
    for (NodeIdx n : prev->second) {
      if (n < c_.nodes_.size() && c_.nodes_[n].pool == p && node_ok(n, a)) chosen.push_back(n);
    }
    if (static_cast<int>(chosen.size()) < a.n) chosen.clear();
    chosen.resize(std::min<size_t>(chosen.size(), a.n));
  }
  auto most_free = [&](std::vector<NodeIdx>& v) {
    std::stable_sort(v.begin(), v.end(), [&](NodeIdx x, NodeIdx y) { return c_.nodes_[x].free() > c_.nodes_[y].free(); });
  };
  auto eligible_in = [&](uint32_t d) {
    std::vector<NodeIdx> v;
    for (NodeIdx n : c_.domains_[d].nodes) {
      if (node_ok(n, a)) v.push_back(n);
    }
    most_free(v);
    return v;
  };
  if (chosen.empty() && a.n <= pool.max_domain_nodes) {
    const BucketIndex& b = pool.domains_by_free;
    for (int f = b.max_key(); f >= 0 && chosen.empty(); --f) {
      for (uint32_t d : b.bucket(f)) {
        if (a.zone >= 0 && c_.domains_[d].zone != static_cast<uint32_t>(a.zone)) continue;
        if (static_cast<int>(c_.domains_[d].nodes.size()) < a.n) continue;
        auto v = eligible_in(d);
        if (static_cast<int>(v.size()) >= a.n) {
          chosen.assign(v.begin(), v.begin() + a.n);
          break;
        }
      }
    }
  }
  if (chosen.empty()) {  // one zone, else the region: domains with the most free first
    std::vector<std::vector<uint32_t>> groups;
    std::vector<uint32_t> all;
    for (uint32_t s : pool.slices) {
      if (a.zone >= 0 && c_.slices_[s].zone != static_cast<uint32_t>(a.zone)) continue;
      std::vector<uint32_t> doms = c_.slices_[s].domains;
      std::sort(doms.begin(), doms.end(), [&](uint32_t x, uint32_t y) { return c_.domains_[x].free > c_.domains_[y].free; });
      groups.push_back(doms);
      all.insert(all.end(), doms.begin(), doms.end());
    }
    std::sort(all.begin(), all.end(), [&](uint32_t x, uint32_t y) { return c_.domains_[x].free > c_.domains_[y].free; });
    groups.push_back(all);
    for (const auto& doms : groups) {
      std::vector<NodeIdx> v;
      for (uint32_t d : doms) {
        for (NodeIdx n : eligible_in(d)) {
          if (static_cast<int>(v.size()) < a.n) v.push_back(n);
        }
        if (static_cast<int>(v.size()) >= a.n) break;
      }
      if (static_cast<int>(v.size()) >= a.n) {
        chosen = std::move(v);
        break;
      }
    }
  }
  if (static_cast<int>(chosen.size()) < a.n) return false;
  for (NodeIdx n : chosen) {
    held_free_[p] += c_.nodes_[n].free();
    held_spot_[p] += c_.nodes_[n].spot();
    c_.hide(n);
  }
  hold_owner_[p] = a.w->id;
  held_nodes_[p] = static_cast<int>(chosen.size());
  plan_.holds.push_back(Hold{a.w->id, std::move(chosen)});
  return true;
}

// ---- One workload ----------------------------------------------------------------------------

void Round::evaluate(const Workload& w) {
  ++plan_.stats.evaluated;
  power_zone_ = -1;
  if (w.id.empty()) return pend(w, PendingCode::kInvalid, "a workload needs an id");
  if (w.nodes < 1 || w.gpus_per_node < 1) return pend(w, PendingCode::kInvalid, "it asks for no GPUs");
  if (w.gpu_type.empty()) return pend(w, PendingCode::kInvalid, "it names no GPU type");
  if (w.gpus_per_node > 64) return pend(w, PendingCode::kInfeasible, "no node has more than 64 GPUs");
  Ask a;
  a.w = &w;
  a.n = w.nodes;
  a.g = w.gpus_per_node;
  a.plain = w.zone.empty() && w.node_selector.empty() && w.tolerations.empty();
  uint32_t type = find(c_.types_, c_.type_by_id_, w.gpu_type);
  if (type == UINT32_MAX) return pend(w, PendingCode::kInfeasible, cat("the fleet has no ", w.gpu_type, " GPUs"));
  a.type = type;
  std::vector<uint32_t> regions;
  if (!w.region.empty()) {
    uint32_t r = find(region_names_, c_.region_by_id_, w.region);
    if (r == UINT32_MAX) return pend(w, PendingCode::kInfeasible, cat("no region ", w.region));
    regions.push_back(r);
  }
  if (!w.zone.empty()) {
    auto zit = c_.zone_by_id_.find(w.zone);
    if (zit == c_.zone_by_id_.end()) return pend(w, PendingCode::kInfeasible, cat("no zone ", w.zone));
    uint32_t zr = c_.zones_[zit->second].region;
    if (!regions.empty() && regions[0] != zr) {
      return pend(w, PendingCode::kInfeasible, cat("zone ", w.zone, " is not in region ", w.region));
    }
    regions.assign(1, zr);
    a.zone = static_cast<int>(zit->second);
  }
  if (regions.empty()) regions = regions_sorted_;

  std::vector<uint32_t> pools;
  PendingCode code = PendingCode::kInfeasible;
  std::string why;
  for (uint32_t r : regions) {
    uint32_t p = c_.pool_of(r, a.type, false);
    if (p == UINT32_MAX || c_.pools_[p].nodes.empty()) continue;
    PendingCode c;
    std::string y;
    if (admit(a, p, &c, &y)) {
      pools.push_back(p);
    } else if (why.empty()) {
      code = c;
      why = std::move(y);
    }
  }
  if (pools.empty()) {
    if (why.empty()) why = cat("no ", w.gpu_type, " GPUs in ", w.region.empty() ? std::string("any region") : "region " + w.region);
    return pend(w, code, std::move(why));
  }
  if (o_.backfill == Backfill::kStrict) {
    std::vector<uint32_t> open;
    for (uint32_t p : pools) {
      if (blocked_by_[p].empty()) open.push_back(p);
    }
    if (open.empty()) {
      return pend(w, PendingCode::kQueued, cat("queued behind ", blocked_by_[pools[0]], ", first in line for ", w.gpu_type,
                                               " in ", region_name(pools[0])));
    }
    pools = std::move(open);
  }

  Choice ch = place(a, pools);
  if (!ch.ok && w.cls != Class::kSpot) ch = preempt(a, pools);
  if (ch.ok) return commit(a, ch);
  fail(a, pools);
}

// ---- Entry points ----------------------------------------------------------------------------

Plan schedule(Cluster& cluster, const std::vector<Workload>& pending, const Options& opts) {
  Plan plan;
  cluster.begin_journal();
  try {
    Round round(cluster, opts, plan);
    round.run(pending);
  } catch (...) {
    cluster.rollback();
    throw;
  }
  cluster.rollback();
  return plan;
}

bool apply(const Plan& plan, Cluster& c, std::string* error) {
  c.begin_journal();
  try {
    for (const Placement& pl : plan.placements) {
      for (const std::string& v : pl.preempts) {
        auto it = c.by_workload_.find(v);
        if (it == c.by_workload_.end()) throw std::runtime_error("victim " + v + " no longer holds GPUs");
        if (c.allocs_[it->second].cls != Class::kSpot) throw std::runtime_error("victim " + v + " is not spot work");
        c.drop(it->second);
      }
      for (auto [n, mask] : pl.gpus) {
        if (n >= c.nodes_.size() || c.nodes_[n].state != NodeState::kReady) {
          throw std::runtime_error("workload " + pl.workload + ": a node is no longer ready");
        }
      }
      Cluster::Alloc a;
      a.workload = pl.workload;
      a.org = pl.org;
      a.project = pl.project;
      a.cls = pl.cls;
      a.parts = pl.gpus;
      c.take(std::move(a));
    }
  } catch (const std::exception& e) {
    c.rollback();
    if (error) *error = e.what();
    return false;
  }
  c.commit();
  c.holds_.clear();
  for (const Hold& h : plan.holds) c.holds_[h.workload] = h.nodes;
  return true;
}

}  // namespace aicloud::sched
