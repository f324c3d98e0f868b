#include "scheduler/cluster.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <map>
#include <stdexcept>
#include <tuple>

namespace aicloud::sched {

namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

const std::string kEmpty;

uint64_t all_gpus(int count) { return count >= 64 ? ~uint64_t(0) : (uint64_t(1) << count) - 1; }

}  // namespace

const char* to_string(NodeState s) {
  switch (s) {
    case NodeState::kReady: return "ready";
    case NodeState::kNotReady: return "not-ready";
    case NodeState::kCordoned: return "cordoned";
    case NodeState::kDraining: return "draining";
  }
  return "?";
}

const char* to_string(Class c) {
  switch (c) {
    case Class::kReserved: return "reserved";
    case Class::kOnDemand: return "on_demand";
    case Class::kSpot: return "spot";
  }
  return "?";
}

uint64_t mask_of(const std::vector<int>& gpus) {
  uint64_t m = 0;
  for (int g : gpus) {
    if (g < 0 || g >= 64) bad("GPU index out of range: " + std::to_string(g));
    m |= uint64_t(1) << g;
  }
  return m;
}

std::vector<int> gpus_of(uint64_t mask) {
  std::vector<int> v;
  for (; mask; mask &= mask - 1) v.push_back(std::countr_zero(mask));
  return v;
}

void Cluster::Node::set_masks(uint64_t free, uint64_t spot) {
  free_mask = free;
  spot_mask = spot;
  free_count = static_cast<int8_t>(std::popcount(free));
  spot_count = static_cast<int8_t>(std::popcount(spot));
}

// ---- Inventory -------------------------------------------------------------------------------

void Cluster::add_zone(const std::string& region, const std::string& zone, double power_budget_kw) {
  if (region.empty() || zone.empty()) bad("a zone needs a region and a name");
  if (power_budget_kw < 0) bad("a power budget cannot be negative");
  auto [rit, rnew] = region_by_id_.try_emplace(region, static_cast<uint32_t>(regions_.size()));
  if (rnew) regions_.push_back(Region{region, {}});
  auto zit = zone_by_id_.find(zone);
  if (zit == zone_by_id_.end()) {
    zit = zone_by_id_.emplace(zone, static_cast<uint32_t>(zones_.size())).first;
    zones_.push_back(Zone{zone, rit->second, 0, 0});
    regions_[rit->second].zones.push_back(zit->second);
  } else if (zones_[zit->second].region != rit->second) {
    bad("zone " + zone + " is in region " + regions_[zones_[zit->second].region].id);
  }
  zones_[zit->second].budget_w = std::llround(power_budget_kw * 1000);
}

uint32_t Cluster::pool_of(uint32_t region, uint32_t type, bool create) {
  uint64_t key = (uint64_t(region) << 32) | type;
  auto it = pool_by_key_.find(key);
  if (it != pool_by_key_.end()) return it->second;
  if (!create) return UINT32_MAX;
  uint32_t p = static_cast<uint32_t>(pools_.size());
  pools_.emplace_back();
  pools_[p].region = region;
  pools_[p].type = type;
  pool_by_key_.emplace(key, p);
  return p;
}

uint32_t Cluster::slice_of(uint32_t zone, uint32_t pool) {
  uint64_t key = (uint64_t(zone) << 32) | pool;
  auto it = slice_by_key_.find(key);
  if (it != slice_by_key_.end()) return it->second;
  uint32_t s = static_cast<uint32_t>(slices_.size());
  slices_.emplace_back();
  slices_[s].zone = zone;
  slices_[s].pool = pool;
  pools_[pool].slices.push_back(s);
  slice_by_key_.emplace(key, s);
  return s;
}

NodeIdx Cluster::add_node(const NodeSpec& spec) {
  if (journaling_) bad("add_node during a round");
  if (spec.id.empty()) bad("a node needs an id");
  if (node_by_id_.count(spec.id)) bad("node " + spec.id + " already exists");
  if (spec.gpu_count < 0 || spec.gpu_count > 64) bad("a node has 0 to 64 GPUs");
  if (spec.gpu_count > 0 && spec.gpu_type.empty()) bad("node " + spec.id + " has GPUs but no type");
  if (spec.gpu_watts < 0) bad("gpu_watts cannot be negative");
  auto zit = zone_by_id_.find(spec.zone);
  if (zit == zone_by_id_.end()) bad("unknown zone " + spec.zone + " (add_zone first)");
  const Zone& zone = zones_[zit->second];
  if (!spec.region.empty() && regions_[zone.region].id != spec.region) {
    bad("zone " + spec.zone + " is not in region " + spec.region);
  }
  auto [tit, tnew] = type_by_id_.try_emplace(spec.gpu_type, static_cast<uint32_t>(types_.size()));
  if (tnew) types_.push_back(spec.gpu_type);
  uint32_t pool = pool_of(zone.region, tit->second, true);
  uint32_t slice = slice_of(zit->second, pool);

  NodeIdx n = static_cast<NodeIdx>(nodes_.size());
  std::string domain_id = spec.nvlink_domain.empty() ? "node:" + spec.id : spec.nvlink_domain;
  auto [dit, dnew] = domain_by_id_.try_emplace(domain_id, static_cast<uint32_t>(domains_.size()));
  if (dnew) {
    Domain d;
    d.id = domain_id;
    d.zone = zit->second;
    d.slice = slice;
    d.pool = pool;
    d.own = spec.nvlink_domain.empty();
    domains_.push_back(std::move(d));
    slices_[slice].domains.push_back(dit->second);
  } else if (domains_[dit->second].slice != slice) {
    bad("NVLink domain " + domain_id + " already has nodes of another zone or GPU type");
  }

  Node node;
  node.id = spec.id;
  node.region = zone.region;
  node.zone = zit->second;
  node.domain = dit->second;
  node.slice = slice;
  node.pool = pool;
  node.gpu_count = spec.gpu_count;
  node.gpu_watts = spec.gpu_watts;
  node.all_mask = all_gpus(spec.gpu_count);
  node.set_masks(node.all_mask, 0);
  node.labels = spec.labels;
  node.taints = spec.taints;
  node.state = spec.state;
  nodes_.push_back(std::move(node));
  node_by_id_.emplace(spec.id, n);

  Domain& d = domains_[dit->second];
  d.nodes.push_back(n);
  filter_cache_.clear();
  sentences_.clear();
  if (!spec.taints.empty()) ++d.tainted;
  Pool& p = pools_[pool];
  p.nodes.push_back(n);
  p.size_hist.add(spec.gpu_count, 1);
  p.max_domain_nodes = std::max(p.max_domain_nodes, static_cast<int>(d.nodes.size()));
  slices_[slice].max_watts = std::max(slices_[slice].max_watts, spec.gpu_watts);
  total_gpus_ += spec.gpu_count;
  index(n);
  return n;
}

std::optional<NodeIdx> Cluster::find_node(const std::string& id) const {
  auto it = node_by_id_.find(id);
  if (it == node_by_id_.end()) return std::nullopt;
  return it->second;
}

void Cluster::set_node_state(const std::string& id, NodeState state) {
  if (journaling_) bad("set_node_state during a round");
  auto n = find_node(id);
  if (!n) bad("unknown node " + id);
  unindex(*n);
  nodes_[*n].state = state;
  index(*n);
}

void Cluster::set_node_labels(const std::string& id, Labels labels) {
  auto n = find_node(id);
  if (!n) bad("unknown node " + id);
  nodes_[*n].labels = std::move(labels);
  filter_cache_.clear();
}

void Cluster::set_node_taints(const std::string& id, std::vector<Taint> taints) {
  auto n = find_node(id);
  if (!n) bad("unknown node " + id);
  if (journaling_) bad("set_node_taints during a round");
  Node& node = nodes_[*n];
  Domain& d = domains_[node.domain];
  d.tainted += (taints.empty() ? 0 : 1) - (node.taints.empty() ? 0 : 1);
  unindex(*n);  // the untainted histograms
  node.taints = std::move(taints);
  index(*n);
  filter_cache_.clear();
}

// ---- The index -------------------------------------------------------------------------------

// A node's contribution to the index: its free count in the histograms of its domain, zone slice
// and pool, its GPUs in their totals, the domain's bucket, and the spot bucket.
void Cluster::unindex(NodeIdx n) {
  Node& node = nodes_[n];
  if (!node.indexed) return;
  node.indexed = false;
  int f = node.free(), s = node.spot();
  Domain& d = domains_[node.domain];
  Slice& sl = slices_[node.slice];
  Pool& p = pools_[node.pool];
  d.free_hist.add(f, -1);
  d.reclaim_hist.add(f + s, -1);
  if (node.taints.empty()) {
    d.clean_free_hist.add(f, -1);
    d.clean_reclaim_hist.add(f + s, -1);
    p.clean_free_hist.add(f, -1);
    p.clean_reclaim_hist.add(f + s, -1);
  }
  d.free -= f;
  d.spot -= s;
  sl.free_hist.add(f, -1);
  sl.reclaim_hist.add(f + s, -1);
  sl.free -= f;
  sl.spot -= s;
  p.free_hist.add(f, -1);
  p.reclaim_hist.add(f + s, -1);
  p.free -= f;
  p.spot -= s;
  p.gpus -= node.gpu_count;
  --p.indexed_nodes;
  if (--d.indexed == 0) {
    p.domains_by_free.erase(node.domain);
  } else {
    p.domains_by_free.set(node.domain, d.free);
  }
}

void Cluster::index(NodeIdx n) {
  Node& node = nodes_[n];
  if (node.indexed || node.state != NodeState::kReady || node.hidden || node.gpu_count == 0) return;
  node.indexed = true;
  int f = node.free(), s = node.spot();
  Domain& d = domains_[node.domain];
  Slice& sl = slices_[node.slice];
  Pool& p = pools_[node.pool];
  d.free_hist.add(f, 1);
  d.reclaim_hist.add(f + s, 1);
  if (node.taints.empty()) {
    d.clean_free_hist.add(f, 1);
    d.clean_reclaim_hist.add(f + s, 1);
    p.clean_free_hist.add(f, 1);
    p.clean_reclaim_hist.add(f + s, 1);
  }
  d.free += f;
  d.spot += s;
  sl.free_hist.add(f, 1);
  sl.reclaim_hist.add(f + s, 1);
  sl.free += f;
  sl.spot += s;
  p.free_hist.add(f, 1);
  p.reclaim_hist.add(f + s, 1);
  p.free += f;
  p.spot += s;
  p.gpus += node.gpu_count;
  ++p.indexed_nodes;
  ++d.indexed;
  p.domains_by_free.set(node.domain, d.free);
}

// ---- Allocations -----------------------------------------------------------------------------

const std::string& Cluster::usage_key(const std::string& scope, const std::string& type,
                                      const std::string& region) const {
  std::string& k = key_buf_;
  k.clear();
  k += scope;
  k += '\x1f';
  k += type;
  k += '\x1f';
  k += region;
  return k;
}

// Quota usage is counted only for scopes that have a limit (set_quotas recounts), and reserved
// use per organization for reservations.
void Cluster::count_usage(const Alloc& a, int sign) {
  const std::string& type = types_[a.type];
  const std::string& region = regions_[a.region].id;
  if (a.cls == Class::kReserved) {
    reserved_used_[usage_key(a.org, type, region)] += sign * a.gpus;
    return;
  }
  if (quotas_by_scope_.empty()) return;
  for (const std::string* scope : {&a.org, &a.project}) {
    if (scope->empty() || !quotas_by_scope_.count(*scope)) continue;
    for (const std::string* t : {&type, &kEmpty}) {
      for (const std::string* r : {&region, &kEmpty}) usage_[usage_key(*scope, *t, *r)] += sign * a.gpus;
    }
  }
}

uint32_t Cluster::take(Alloc a) {
  if (by_workload_.count(a.workload)) bad("workload " + a.workload + " already holds GPUs");
  if (a.parts.empty()) bad("workload " + a.workload + " holds no GPUs");
  int gpus = 0;
  for (size_t i = 0; i < a.parts.size(); ++i) {
    auto [n, mask] = a.parts[i];
    if (n >= nodes_.size()) bad("no such node");
    const Node& node = nodes_[n];
    if (mask == 0 || (mask & ~node.all_mask)) bad("node " + node.id + " has no such GPU");
    if (mask & ~node.free_mask) bad("a GPU of node " + node.id + " is already taken");
    if (node.pool != nodes_[a.parts[0].first].pool) bad("a gang's nodes share a region and GPU type");
    for (size_t j = 0; j < i; ++j) {
      if (a.parts[j].first == n) bad("node " + node.id + " appears twice in one placement");
    }
    gpus += std::popcount(mask);
  }
  a.gpus = gpus;
  a.type = pools_[nodes_[a.parts[0].first].pool].type;
  a.region = nodes_[a.parts[0].first].region;
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<uint32_t>(allocs_.size());
    allocs_.emplace_back();
  }
  restore(slot, std::move(a));
  if (journaling_) journal_.push_back(Undo{Undo::kTook, slot, 0, 0});
  return slot;
}

// Puts an allocation into a given slot (a new one, or one it was dropped from).
void Cluster::restore(uint32_t slot, Alloc a) {
  a.live = true;
  for (auto [n, mask] : a.parts) {
    unindex(n);
    Node& node = nodes_[n];
    node.set_masks(node.free_mask & ~mask, a.cls == Class::kSpot ? node.spot_mask | mask : node.spot_mask);
    if (!a.ports.empty()) {
      if (node.ports.empty()) ++domains_[node.domain].ported;
      node.ports.insert(node.ports.end(), a.ports.begin(), a.ports.end());
    }
    node.allocs.push_back(slot);
    zones_[node.zone].used_w += int64_t(std::popcount(mask)) * node.gpu_watts;
    index(n);
  }
  allocated_gpus_ += a.gpus;
  count_usage(a, +1);
  by_workload_[a.workload] = slot;
  allocs_[slot] = std::move(a);
}

void Cluster::drop(uint32_t slot) {
  Alloc& a = allocs_[slot];
  for (auto [n, mask] : a.parts) {
    unindex(n);
    Node& node = nodes_[n];
    node.set_masks(node.free_mask | mask, node.spot_mask & ~mask);
    for (int port : a.ports) node.ports.erase(std::find(node.ports.begin(), node.ports.end(), port));
    if (!a.ports.empty() && node.ports.empty()) --domains_[node.domain].ported;
    auto it = std::find(node.allocs.begin(), node.allocs.end(), slot);
    *it = node.allocs.back();
    node.allocs.pop_back();
    zones_[node.zone].used_w -= int64_t(std::popcount(mask)) * node.gpu_watts;
    index(n);
  }
  allocated_gpus_ -= a.gpus;
  count_usage(a, -1);
  by_workload_.erase(a.workload);
  a.live = false;
  if (journaling_) {
    journal_.push_back(Undo{Undo::kDropped, slot, 0, static_cast<uint32_t>(saved_.size())});
    saved_.push_back(std::move(a));
    allocs_[slot] = Alloc{};
    dead_slots_.push_back(slot);
  } else {
    allocs_[slot] = Alloc{};
    free_slots_.push_back(slot);
  }
}

void Cluster::hide(NodeIdx n) {
  Node& node = nodes_[n];
  if (node.hidden) return;
  unindex(n);
  node.hidden = true;
  if (journaling_) journal_.push_back(Undo{Undo::kHid, 0, n, 0});
}

void Cluster::begin_journal() {
  journaling_ = true;
  journal_.clear();
  saved_.clear();
}

void Cluster::rollback() {
  journaling_ = false;  // the inverses below are not journaled
  for (auto it = journal_.rbegin(); it != journal_.rend(); ++it) {
    switch (it->kind) {
      case Undo::kTook: drop(it->slot); break;
      case Undo::kDropped: restore(it->slot, std::move(saved_[it->saved])); break;
      case Undo::kHid:
        nodes_[it->node].hidden = false;
        index(it->node);
        break;
    }
  }
  journal_.clear();
  saved_.clear();
  dead_slots_.clear();  // every dead slot was restored above
}

void Cluster::commit() {
  journaling_ = false;
  for (const Undo& u : journal_) {
    if (u.kind == Undo::kHid) {  // holds last one round
      nodes_[u.node].hidden = false;
      index(u.node);
    }
  }
  journal_.clear();
  saved_.clear();
  free_slots_.insert(free_slots_.end(), dead_slots_.begin(), dead_slots_.end());
  dead_slots_.clear();
}

void Cluster::add_running(const Running& r) {
  if (journaling_) bad("add_running during a round");
  Alloc a;
  a.workload = r.workload;
  a.org = r.org;
  a.project = r.project;
  a.cls = r.cls;
  a.ports = r.ports;
  for (const NodeGpus& ng : r.on) {
    auto n = find_node(ng.node);
    if (!n) bad("unknown node " + ng.node);
    a.parts.emplace_back(*n, mask_of(ng.gpus));
  }
  take(std::move(a));
}

bool Cluster::release(const std::string& workload) {
  if (journaling_) bad("release during a round");
  auto it = by_workload_.find(workload);
  if (it == by_workload_.end()) return false;
  drop(it->second);
  return true;
}

std::optional<Running> Cluster::running(const std::string& workload) const {
  auto it = by_workload_.find(workload);
  if (it == by_workload_.end()) return std::nullopt;
  const Alloc& a = allocs_[it->second];
  Running r{a.workload, a.org, a.project, a.cls, {}, a.ports};
  for (auto [n, mask] : a.parts) r.on.push_back(NodeGpus{nodes_[n].id, gpus_of(mask)});
  return r;
}

// ---- Policy ----------------------------------------------------------------------------------

void Cluster::set_reservations(std::vector<Reservation> reservations) {
  for (const Reservation& r : reservations) {
    if (r.gpus < 0) bad("reservation " + r.id + " has a negative size");
  }
  reservations_ = std::move(reservations);
}

void Cluster::set_quotas(std::vector<QuotaLimit> quotas) {
  quotas_ = std::move(quotas);
  sentences_.clear();  // they name quotas by index
  quotas_by_scope_.clear();
  for (uint32_t i = 0; i < quotas_.size(); ++i) quotas_by_scope_[quotas_[i].scope].push_back(i);
  usage_.clear();
  for (const Alloc& a : allocs_) {
    if (a.live && a.cls != Class::kReserved) count_usage(a, +1);
  }
}

int64_t Cluster::reserved_headroom(uint32_t pool, int64_t now) const {
  const std::string& type = types_[pools_[pool].type];
  const std::string& region = regions_[pools_[pool].region].id;
  std::map<std::string, int64_t> by_org;
  for (const Reservation& r : reservations_) {
    if (r.approved && r.start <= now && now < r.end && r.gpu_type == type && r.region == region) {
      by_org[r.org] += r.gpus;
    }
  }
  int64_t headroom = 0;
  for (auto& [org, n] : by_org) {
    auto it = reserved_used_.find(usage_key(org, type, region));
    headroom += std::max<int64_t>(0, n - (it == reserved_used_.end() ? 0 : it->second));
  }
  return headroom;
}

std::vector<Offer> Cluster::offers(int64_t now, const std::string& org) const {
  std::vector<Offer> out;
  for (uint32_t p = 0; p < pools_.size(); ++p) {
    const Pool& pool = pools_[p];
    if (types_[pool.type].empty()) continue;  // GPU-less nodes
    Offer o;
    o.region = regions_[pool.region].id;
    o.gpu_type = types_[pool.type];
    o.nodes = pool.indexed_nodes;
    o.total_gpus = pool.gpus;
    o.free_gpus = pool.free;
    o.spot_gpus = pool.spot;
    o.reserved_headroom = static_cast<int>(reserved_headroom(p, now));
    if (!org.empty()) {
      for (const Reservation& r : reservations_) {
        if (r.approved && r.org == org && r.start <= now && now < r.end && r.gpu_type == o.gpu_type &&
            r.region == o.region) {
          o.reserved_gpus += r.gpus;
        }
      }
      auto used = reserved_used_.find(usage_key(org, o.gpu_type, o.region));
      o.reserved_unused = std::max(0, o.reserved_gpus - (used == reserved_used_.end() ? 0 : used->second));
    }
    out.push_back(o);
  }
  std::sort(out.begin(), out.end(), [](const Offer& a, const Offer& b) {
    return std::tie(a.region, a.gpu_type) < std::tie(b.region, b.gpu_type);
  });
  return out;
}

double Cluster::zone_power_used_kw(const std::string& zone) const {
  auto it = zone_by_id_.find(zone);
  return it == zone_by_id_.end() ? 0.0 : zones_[it->second].used_w / 1000.0;
}

// ---- Invariants ------------------------------------------------------------------------------

std::string Cluster::check_invariants() const {
  // GPUs: the allocations partition the used GPUs; nothing is taken twice.
  std::vector<uint64_t> used(nodes_.size(), 0), spot(nodes_.size(), 0);
  std::vector<std::vector<int>> ports(nodes_.size());
  std::vector<int64_t> watts(zones_.size(), 0);
  int64_t allocated = 0;
  size_t live = 0;
  for (uint32_t slot = 0; slot < allocs_.size(); ++slot) {
    const Alloc& a = allocs_[slot];
    if (!a.live) continue;
    ++live;
    auto it = by_workload_.find(a.workload);
    if (it == by_workload_.end() || it->second != slot) return "by_workload out of date: " + a.workload;
    for (auto [n, mask] : a.parts) {
      if (used[n] & mask) return "GPU double-booked on node " + nodes_[n].id;
      used[n] |= mask;
      if (a.cls == Class::kSpot) spot[n] |= mask;
      ports[n].insert(ports[n].end(), a.ports.begin(), a.ports.end());
      watts[nodes_[n].zone] += int64_t(std::popcount(mask)) * nodes_[n].gpu_watts;
      if (std::find(nodes_[n].allocs.begin(), nodes_[n].allocs.end(), slot) == nodes_[n].allocs.end()) {
        return "node " + nodes_[n].id + " lost an allocation";
      }
    }
    allocated += a.gpus;
  }
  if (live != by_workload_.size()) return "by_workload has dead entries";
  if (allocated != allocated_gpus_) return "allocated_gpus out of date";
  for (uint32_t z = 0; z < zones_.size(); ++z) {
    if (watts[z] != zones_[z].used_w) return "power of zone " + zones_[z].id + " out of date";
  }
  // The index: recount every histogram and total from the nodes.
  std::vector<Hist> dfree(domains_.size()), drec(domains_.size()), sfree(slices_.size()),
      srec(slices_.size()), pfree(pools_.size()), prec(pools_.size()), dcfree(domains_.size()),
      dcrec(domains_.size()), pcfree(pools_.size()), pcrec(pools_.size());
  std::vector<int> df(domains_.size()), ds(domains_.size()), di(domains_.size()), sf(slices_.size()),
      ss(slices_.size()), pf(pools_.size()), ps(pools_.size()), pg(pools_.size()), pn(pools_.size());
  std::vector<int> ported(domains_.size(), 0);
  for (NodeIdx n = 0; n < nodes_.size(); ++n) {
    const Node& node = nodes_[n];
    if (node.free_mask != (node.all_mask & ~used[n])) return "free GPUs of node " + node.id + " out of date";
    std::vector<int> held = node.ports;
    std::sort(held.begin(), held.end());
    std::sort(ports[n].begin(), ports[n].end());
    if (held != ports[n]) return "host ports of node " + node.id + " out of date";
    ported[node.domain] += !held.empty();
    if (node.spot_mask != spot[n]) return "spot GPUs of node " + node.id + " out of date";
    if (node.free() != std::popcount(node.free_mask) || node.spot() != std::popcount(node.spot_mask)) {
      return "GPU counts of node " + node.id + " out of date";
    }
    bool should = node.state == NodeState::kReady && !node.hidden && node.gpu_count > 0;
    if (node.indexed != should) return "node " + node.id + " indexed wrongly";
    if (!should) continue;
    int f = node.free(), s = node.spot();
    dfree[node.domain].add(f, 1);
    drec[node.domain].add(f + s, 1);
    sfree[node.slice].add(f, 1);
    srec[node.slice].add(f + s, 1);
    pfree[node.pool].add(f, 1);
    prec[node.pool].add(f + s, 1);
    if (node.taints.empty()) {
      dcfree[node.domain].add(f, 1);
      dcrec[node.domain].add(f + s, 1);
      pcfree[node.pool].add(f, 1);
      pcrec[node.pool].add(f + s, 1);
    }
    df[node.domain] += f;
    ds[node.domain] += s;
    ++di[node.domain];
    sf[node.slice] += f;
    ss[node.slice] += s;
    pf[node.pool] += f;
    ps[node.pool] += s;
    pg[node.pool] += node.gpu_count;
    ++pn[node.pool];
  }
  auto same = [](const Hist& a, const Hist& b) {
    for (int k = 0; k <= 64; ++k) {
      if (a.count(k) != b.count(k)) return false;
    }
    return true;
  };
  for (uint32_t d = 0; d < domains_.size(); ++d) {
    const Domain& dom = domains_[d];
    if (!same(dom.free_hist, dfree[d]) || !same(dom.reclaim_hist, drec[d])) return "histogram of domain " + dom.id;
    if (!same(dom.clean_free_hist, dcfree[d]) || !same(dom.clean_reclaim_hist, dcrec[d])) {
      return "untainted histogram of domain " + dom.id;
    }
    if (dom.free != df[d] || dom.spot != ds[d] || dom.indexed != di[d]) return "totals of domain " + dom.id;
    if (dom.ported != ported[d]) return "nodes with host ports of domain " + dom.id;
    const Pool& p = pools_[dom.pool];
    if (p.domains_by_free.contains(d) != (di[d] > 0)) return "domain bucket of " + dom.id;
    if (di[d] > 0 && p.domains_by_free.key(d) != df[d]) return "domain bucket key of " + dom.id;
  }
  for (uint32_t s = 0; s < slices_.size(); ++s) {
    const Slice& sl = slices_[s];
    if (!same(sl.free_hist, sfree[s]) || !same(sl.reclaim_hist, srec[s])) return "histogram of a zone slice";
    if (sl.free != sf[s] || sl.spot != ss[s]) return "totals of a zone slice";
  }
  for (uint32_t p = 0; p < pools_.size(); ++p) {
    const Pool& pool = pools_[p];
    if (!same(pool.free_hist, pfree[p]) || !same(pool.reclaim_hist, prec[p])) return "histogram of a pool";
    if (!same(pool.clean_free_hist, pcfree[p]) || !same(pool.clean_reclaim_hist, pcrec[p])) {
      return "untainted histogram of a pool";
    }
    if (pool.free != pf[p] || pool.spot != ps[p] || pool.gpus != pg[p] || pool.indexed_nodes != pn[p]) {
      return "totals of a pool";
    }
  }
  return "";
}

}  // namespace aicloud::sched
