#include "scheduler/scheduler.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <type_traits>
#include <utility>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

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
    case PendingCode::kPortInUse: return "port_in_use";
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

// String building without iostreams: cat("a", 1, b), in one allocation (room for each part is
// counted first: the longest a number can be, a string's length).
size_t room(const std::string& x) { return x.size(); }
size_t room(const char* x) { return std::strlen(x); }
size_t room(char) { return 1; }
template <class T>
  requires std::is_integral_v<T>
size_t room(T) { return 20; }
size_t room(double) { return 32; }
void put(std::string& s, const std::string& x) { s += x; }
void put(std::string& s, const char* x) { s += x; }
void put(std::string& s, char x) { s += x; }
template <class T>
  requires std::is_integral_v<T>
void put(std::string& s, T x) {
  char buf[24];
  s.append(buf, std::to_chars(buf, buf + sizeof buf, x).ptr);
}
void put(std::string& s, double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", x);
  s += buf;
}
template <class... A>
std::string cat(const A&... a) {
  std::string s;
  s.reserve((room(a) + ...));
  (put(s, a), ...);
  return s;
}
const char* plural(long n, const char* one, const char* many) { return n == 1 ? one : many; }
const std::string kEmptyString;

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

// A fast counter for decision times: the time-stamp counter on x86-64, else the clock's ticks.
uint64_t ticks() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
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
    bool plain = false;  // no zone, selector, tolerations or ports: same answer for the same shape
    // The workload's constraints (zone, selector, tolerations, ports) as a small number, the same for
    // every workload of the round with the same ones; 0 = plain. Keys the round's caches.
    uint32_t cid = 0;
  };
  using Outcome = std::pair<PendingCode, std::string>;  // why a workload is pending
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
  // Whether a pool may take the workload (quota, reservation); if not, the code, and the
  // sentence in *why unless why is null.
  bool admit(const Ask& a, uint32_t pool, PendingCode* code, std::string* why);
  // A sentence from the cluster's memo (Cluster::sentences_), written by `write` the first time:
  // write() returns the sentence; write_outcome() the code and the sentence.
  template <class F>
  const std::string& sentence(const MemoKey& key, const std::string& check, F write);
  template <class F>
  Outcome outcome(const MemoKey& key, const std::string& check, F write_outcome);
  int64_t headroom(uint32_t pool);

  // The histograms a workload can use: those of untainted nodes when it tolerates no taint
  // (exact for it), else those of every node (an upper bound).
  template <class T>
  static const Hist& free_hist(const T& x, const Ask& a) {
    return a.w->tolerations.empty() ? x.clean_free_hist : x.free_hist;
  }
  template <class T>
  static const Hist& reclaim_hist(const T& x, const Ask& a) {
    return a.w->tolerations.empty() ? x.clean_reclaim_hist : x.reclaim_hist;
  }
  bool node_ok(NodeIdx n, const Ask& a) const { return c_.nodes_[n].indexed && static_ok(n, a); }
  // Zone, size, labels, taints and (unless told not to) host ports: what the index cannot see.
  bool static_ok(NodeIdx n, const Ask& a, bool ports = true) const;
  bool power_ok(const std::vector<NodeIdx>& nodes, int g, const std::vector<uint32_t>& victims);
  // Per (constraints, pool), per g: the fewest nodes of g GPUs that failed this round.
  using FailCache = std::vector<std::vector<int>>;
  bool failed_before(uint32_t pool, const Ask& a, const FailCache& cache) const;
  void note_failed(uint32_t pool, const Ask& a, FailCache& cache);
  uint32_t constraints_id(const Workload& w);

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
  const Outcome& explain(const Ask& a, uint32_t pool);
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
  std::vector<uint32_t> pool_by_rt_;       // region * types + type -> pool, or UINT32_MAX
  // Active reservations, one entry per (organization, pool) with their GPUs summed. `used` points
  // at the cluster's count of GPUs the organization's reserved work holds there (its map's
  // nodes do not move), so that admission reads it without building a key.
  struct Resv {
    uint32_t pool = 0;
    int total = 0;
    const int* used = nullptr;
  };
  std::vector<Resv> resv_;
  std::vector<std::vector<uint32_t>> pool_resv_;                        // pool -> entries
  // Names -> small numbers, for the few names looked up for every workload (organizations with
  // a reservation, scopes with a quota): a short list is compared, a long one hashed.
  struct Names {
    std::vector<std::string> list;
    std::unordered_map<std::string, uint32_t> index;
    uint32_t add(const std::string& s) {
      auto [it, fresh] = index.try_emplace(s, static_cast<uint32_t>(list.size()));
      if (fresh) list.push_back(s);
      return it->second;
    }
    uint32_t find(const std::string& s) const {
      if (list.size() <= 8) {
        for (uint32_t i = 0; i < list.size(); ++i) {
          if (list[i] == s) return i;
        }
        return UINT32_MAX;
      }
      auto it = index.find(s);
      return it == index.end() ? UINT32_MAX : it->second;
    }
  };
  Names resv_orgs_;
  std::vector<std::vector<uint32_t>> resv_of_org_;  // org -> entries
  Names quota_scopes_;
  std::vector<const std::vector<uint32_t>*> quotas_of_scope_;  // scope -> quotas
  std::vector<const int*> quota_used_;  // per quota: what its scope holds of it
  std::vector<std::string> hold_owner_;   // per pool: the workload nodes are held for this round
  std::vector<int> held_nodes_, held_free_, held_spot_;
  std::vector<std::string> blocked_by_;   // strict mode: the pool's blocked head
  std::unordered_map<std::string, uint32_t> constraints_;  // constraints -> Ask::cid
  std::vector<const std::string*> constraint_names_{&kEmptyString};  // Ask::cid -> constraints
  FailCache fail_, fail_preempt_;  // [cid * pools + pool][g]
  // Outcomes already worked out this round, by constraints, shape, pools and holds (the
  // cluster's sentences_ keep the sentences across rounds): a saturated queue asks the same few
  // questions hundreds of times a round. Kept for the round, so their numbers may be a few
  // placements old, as a first answer would have been.
  MemoMap<Outcome> explained_;  // explain()
  MemoMap<Outcome> failed_;     // fail()
  // What a pool's hold adds to the sentences about it: 0 none, 1 a hold for another workload,
  // 2 this workload's own hold. Part of the memos' keys, since a hold changes those sentences.
  int hold_state(const Ask& a, uint32_t p) const {
    return hold_owner_[p].empty() ? 0 : hold_owner_[p] == a.w->id ? 2 : 1;
  }
  // Scratch for evaluate(), kept to spare an allocation per workload.
  std::vector<uint32_t> regions_buf_, pools_buf_;
  // Set while evaluating one workload: a zone's power budget refused a candidate.
  int power_zone_ = -1;
  int64_t power_need_w_ = 0;
};

void Round::run(const std::vector<Workload>& pending) {
  if (c_.sentences_.size() >= 4096) c_.sentences_.clear();  // bounded; never during a round
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
  size_t nt = c_.types_.size();
  pool_by_rt_.assign(c_.regions_.size() * nt, UINT32_MAX);
  for (uint32_t p = 0; p < np; ++p) pool_by_rt_[c_.pools_[p].region * nt + c_.pools_[p].type] = p;
  for (const Reservation& r : c_.reservations_) {
    if (!r.approved || r.start > o_.now || o_.now >= r.end || r.gpus <= 0) continue;
    auto rit = c_.region_by_id_.find(r.region);
    auto tit = c_.type_by_id_.find(r.gpu_type);
    if (rit == c_.region_by_id_.end() || tit == c_.type_by_id_.end()) continue;
    uint32_t p = c_.pool_of(rit->second, tit->second, false);
    if (p == UINT32_MAX) continue;
    uint32_t org = resv_orgs_.add(r.org);
    if (org == resv_of_org_.size()) resv_of_org_.emplace_back();
    std::vector<uint32_t>& mine = resv_of_org_[org];
    auto it = std::find_if(mine.begin(), mine.end(), [&](uint32_t e) { return resv_[e].pool == p; });
    if (it == mine.end()) {
      Resv e;
      e.pool = p;
      e.used = &c_.reserved_used_[c_.usage_key(r.org, r.gpu_type, r.region)];  // 0 if new
      it = mine.insert(mine.end(), static_cast<uint32_t>(resv_.size()));
      pool_resv_[p].push_back(*it);
      resv_.push_back(e);
    }
    resv_[*it].total += r.gpus;
  }
  for (const auto& [scope, quotas] : c_.quotas_by_scope_) {
    quota_scopes_.add(scope);
    quotas_of_scope_.push_back(&quotas);
  }
  for (const QuotaLimit& q : c_.quotas_) {
    quota_used_.push_back(&c_.usage_[c_.usage_key(q.scope, q.gpu_type, q.region)]);  // 0 if new
  }

  // The queue's order, on integer keys before the id. Class, priority and submit time fit one
  // word when the priority is within +-2^20 and the time within 0..2^40 (always, in practice);
  // else they take two.
  struct Key {
    uint64_t hi, mid, seq;
    const Workload* w;
  };
  std::vector<Key> keys;
  keys.reserve(pending.size());
  bool packed = true;
  for (const Workload& w : pending) {
    uint64_t prio = static_cast<uint64_t>(int64_t(INT32_MAX) - w.priority);  // higher first: < 2^32
    uint64_t submit = static_cast<uint64_t>(w.submit_time) ^ (uint64_t(1) << 63);  // order-preserving
    keys.push_back(Key{(uint64_t(w.cls) << 32) | prio, submit, w.seq, &w});
    packed = packed && w.priority >= -(1 << 20) && w.priority < (1 << 20) && w.submit_time >= 0 &&
             w.submit_time < (int64_t(1) << 40);
  }
  if (packed) {  // cls: 2 bits, priority: 21 bits, submit: 40 bits
    for (Key& k : keys) {
      uint64_t prio = static_cast<uint64_t>((1 << 20) - 1 - k.w->priority);
      k.hi = (uint64_t(k.w->cls) << 61) | (prio << 40) | static_cast<uint64_t>(k.w->submit_time);
      k.mid = 0;
    }
  }
  auto before = [](const Key& a, const Key& b) {
    if (a.hi != b.hi) return a.hi < b.hi;
    if (a.mid != b.mid) return a.mid < b.mid;  // the submit time, when not packed
    if (a.seq != b.seq) return a.seq < b.seq;
    return a.w->id < b.w->id;
  };
  // The pending list usually comes in submission order (the store's), so within one class and
  // priority it is nearly sorted already: workloads are dealt into their (class, priority) band,
  // stably, and each band is insertion-sorted, about one comparison per workload when in order.
  // std::sort where there are many bands, or where a band turns out to be far from sorted.
  auto band = [packed](const Key& k) { return packed ? k.hi >> 40 : k.hi; };
  std::vector<std::pair<uint64_t, uint32_t>> bands;  // (band, workloads), then offsets
  for (const Key& k : keys) {
    uint64_t b = band(k);
    auto it = std::find_if(bands.begin(), bands.end(), [b](const auto& x) { return x.first == b; });
    if (it != bands.end()) {
      ++it->second;
    } else if (bands.size() < 16) {
      bands.emplace_back(b, 1);
    } else {
      bands.clear();
      break;
    }
  }
  if (bands.empty()) {
    std::sort(keys.begin(), keys.end(), before);
  } else {
    std::sort(bands.begin(), bands.end());
    uint32_t at = 0;
    for (auto& [b, n] : bands) at += std::exchange(n, at);
    std::vector<Key> dealt(keys.size());
    for (const Key& k : keys) {
      uint64_t b = band(k);
      dealt[std::find_if(bands.begin(), bands.end(), [b](const auto& x) { return x.first == b; })->second++] = k;
    }
    keys.swap(dealt);
    auto first = keys.begin();
    for (const auto& [b, end] : bands) {
      auto last = keys.begin() + end;
      size_t moves = 0, budget = 8 * static_cast<size_t>(last - first) + 64;
      for (auto i = first + (first != last); i < last && moves <= budget; ++i) {
        Key k = *i;
        auto j = i;
        for (; j != first && before(k, *(j - 1)); --j, ++moves) *j = *(j - 1);
        *j = k;
      }
      if (moves > budget) std::sort(first, last, before);
      first = last;
    }
  }
  plan_.pending.reserve(keys.size());
  if (!o_.record_decision_times) {
    for (const Key& k : keys) evaluate(*k.w);
    return;
  }
  // Decision times (benchmarks): one reading per decision, each ending where the next begins,
  // of the CPU's time-stamp counter where it has one (a third of the cost of a clock reading,
  // which would otherwise be a tenth of a saturated round); converted to nanoseconds with two
  // clock readings around the whole round.
  std::vector<uint32_t>& times = plan_.stats.decision_ns;
  times.reserve(keys.size());
  auto c0 = std::chrono::steady_clock::now();
  uint64_t t0 = ticks(), first = t0;
  for (const Key& k : keys) {
    evaluate(*k.w);
    uint64_t t1 = ticks();
    times.push_back(static_cast<uint32_t>(std::min<uint64_t>(t1 - t0, UINT32_MAX)));
    t0 = t1;
  }
  double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - c0).count();
  double per_tick = t0 > first ? ns / static_cast<double>(t0 - first) : 0;
  for (uint32_t& t : times) t = static_cast<uint32_t>(std::min(t * per_tick, double(UINT32_MAX)));
}

void Round::pend(const Workload& w, PendingCode code, std::string reason) {
  plan_.pending.push_back(Pending{w.id, code, std::move(reason)});
  ++plan_.stats.pending;
}

// ---- Admission -------------------------------------------------------------------------------

int64_t Round::headroom(uint32_t pool) {
  int64_t h = 0;
  for (uint32_t e : pool_resv_[pool]) h += std::max<int64_t>(0, resv_[e].total - *resv_[e].used);
  return h;
}

// The key's first word says which sentence it is (its kind, in the top byte); the others hold
// every number the sentence contains.
template <class F>
const std::string& Round::sentence(const MemoKey& key, const std::string& check, F write) {
  auto [it, fresh] = c_.sentences_.try_emplace(key);
  if (fresh || it->check != check) *it = Cluster::Sentence{check, write(), 0};
  return it->text;
}

template <class F>
Round::Outcome Round::outcome(const MemoKey& key, const std::string& check, F write_outcome) {
  auto [it, fresh] = c_.sentences_.try_emplace(key);
  if (fresh || it->check != check) {
    Outcome o = write_outcome();
    *it = Cluster::Sentence{check, std::move(o.second), static_cast<uint8_t>(o.first)};
  }
  return {static_cast<PendingCode>(it->code), it->text};
}

namespace {
enum SentenceKind : uint64_t {
  kReservationFullText = 1,
  kQuotaText,
  kReservedText,
  kQueuedText,
  kExplainText,
  kConstrainedText,
};
uint64_t kind_key(SentenceKind k, uint64_t id) { return (uint64_t(k) << 56) | id; }
uint64_t pair_key(int64_t x, int64_t y) { return (static_cast<uint64_t>(x) << 32) ^ static_cast<uint64_t>(y); }
}  // namespace

bool Round::admit(const Ask& a, uint32_t pool, PendingCode* code, std::string* why) {
  const Workload& w = *a.w;
  int gpus = w.gpus();
  if (w.cls == Class::kReserved) {
    uint32_t entry = UINT32_MAX;
    uint32_t org = resv_orgs_.find(w.org);
    if (org != UINT32_MAX) {
      for (uint32_t e : resv_of_org_[org]) {
        if (resv_[e].pool == pool) entry = e;
      }
    }
    if (entry == UINT32_MAX) {
      *code = PendingCode::kNoReservation;
      if (why) *why = cat("no active reservation of ", type_name(a), " in ", region_name(pool), " for ", w.org);
      return false;
    }
    int total = resv_[entry].total, used = *resv_[entry].used;
    if (used + gpus > total) {
      *code = PendingCode::kReservationFull;
      if (why) {
        *why = sentence({kind_key(kReservationFullText, pool), pair_key(total, used), uint64_t(gpus), 0}, w.org, [&] {
          return cat("reservation full: ", w.org, " has ", total, " ", type_name(a), " GPUs reserved in ",
                     region_name(pool), ", its reserved workloads hold ", used, " and this one needs ", gpus);
        });
      }
      return false;
    }
    return true;  // reserved work is bounded by its reservation, not by quotas
  }
  if (!quotas_of_scope_.empty()) {
    const std::string& type = type_name(a);
    const std::string& region = region_name(pool);
    for (const std::string* scope : {&w.org, &w.project}) {
      if (scope->empty()) continue;
      uint32_t si = quota_scopes_.find(*scope);
      if (si == UINT32_MAX) continue;
      for (uint32_t qi : *quotas_of_scope_[si]) {
        const QuotaLimit& q = c_.quotas_[qi];
        if ((!q.gpu_type.empty() && q.gpu_type != type) || (!q.region.empty() && q.region != region)) continue;
        int used = *quota_used_[qi];
        if (used + gpus > q.max_gpus) {
          *code = PendingCode::kQuota;
          if (why) {
            *why = sentence({kind_key(kQuotaText, qi), pair_key(used, gpus), 0, 0}, kEmptyString, [&] {
              return cat("over quota: ", *scope, " may hold ", q.max_gpus, " ",
                         q.gpu_type.empty() ? std::string() : q.gpu_type + " ", "GPUs",
                         q.region.empty() ? std::string() : " in " + q.region, ", holds ", used,
                         " and this workload needs ", gpus);
            });
          }
          return false;
        }
      }
    }
  }
  if (w.cls == Class::kOnDemand && !pool_resv_[pool].empty()) {
    const Pool& p = c_.pools_[pool];
    int64_t h = headroom(pool);
    int64_t avail = p.free + p.spot + held_free_[pool] + held_spot_[pool];
    if (h > 0 && avail >= gpus && avail - gpus < h) {
      *code = PendingCode::kReservedCapacity;
      if (why) {
        *why = sentence({kind_key(kReservedText, pool), static_cast<uint64_t>(avail), static_cast<uint64_t>(h), 0}, kEmptyString, [&] {
          return cat("waiting behind reservations: of the ", avail, " ", type_name(a), " GPUs in ", region_name(pool),
                     " that are free or run spot work, ", h, " are reserved for reserved workloads");
        });
      }
      return false;
    }
  }
  return true;
}

// ---- Feasibility -----------------------------------------------------------------------------

bool Round::static_ok(NodeIdx n, const Ask& a, bool ports) const {
  const Node& node = c_.nodes_[n];
  if (node.gpu_count < a.g) return false;
  if (ports && !node.ports.empty()) {
    for (int port : a.w->ports) {
      if (node.uses_port(port)) return false;
    }
  }
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

// Within a round free capacity only shrinks (placements, holds) until a preemption frees some
// (commit() then forgets the pool's failures): a shape that failed stays failed, and so does
// every larger one with the same constraints.
bool Round::failed_before(uint32_t pool, const Ask& a, const FailCache& cache) const {
  const std::vector<int>& f = cache[a.cid * c_.pools_.size() + pool];
  for (int k = 1; k <= a.g; ++k) {
    if (f[k] <= a.n) return true;  // fewer or smaller GPUs per node already failed
  }
  return false;
}

void Round::note_failed(uint32_t pool, const Ask& a, FailCache& cache) {
  int& f = cache[a.cid * c_.pools_.size() + pool][a.g];
  f = std::min(f, a.n);
}

// ---- Placement without preemption ------------------------------------------------------------

// A gang's nodes: one NVLink domain, else one zone, else the region; every region allowed
// tries a tier before any region tries the next.
Round::Choice Round::place(const Ask& a, const std::vector<uint32_t>& pools) {
  for (Tier tier : {Tier::kDomain, Tier::kZone, Tier::kRegion}) {
    if (tier != Tier::kDomain && a.n == 1) break;
    for (uint32_t p : pools) {
      const Pool& pool = c_.pools_[p];
      if (pool.free < a.n * a.g || free_hist(pool, a).at_least(a.g) < a.n) continue;
      if (failed_before(p, a, fail_)) continue;
      Choice ch = tier == Tier::kDomain ? place_domain(a, p) : tier == Tier::kZone ? place_zone(a, p) : place_region(a, p);
      if (ch.ok) return ch;
    }
  }
  for (uint32_t p : pools) note_failed(p, a, fail_);
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
      if (free_hist(dom, a).at_least(a.g) < a.n) continue;
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
  int upper = free_hist(dom, a).at_least(a.g);
  if (upper == 0 || (a.w->node_selector.empty() && (dom.tainted == 0 || a.w->tolerations.empty()) &&
                     (dom.ported == 0 || a.w->ports.empty()))) {
    return upper;
  }
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
    if (pool.free + pool.spot < a.n * a.g || reclaim_hist(pool, a).at_least(a.g) < a.n) continue;
    if (failed_before(p, a, fail_preempt_)) continue;
    Choice ch = preempt_domain(a, p);
    if (!ch.ok && a.n > 1) ch = preempt_region(a, p);
    if (ch.ok && (!best.ok || ch.tier < best.tier || (ch.tier == best.tier && ch.cost < best.cost))) best = std::move(ch);
  }
  if (!best.ok) {
    for (uint32_t p : pools) note_failed(p, a, fail_preempt_);
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
      // Every node's histogram here, not reclaim_hist(dom, a): the domains that pass count against
      // max_preemption_domains, and skipping tainted ones too changed which victims were found
      // (fewer preemptions, but 0.3 points fewer GPUs allocated at saturation in the simulator).
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
      if (reclaim_hist(c_.domains_[d], a).at_least(a.g) == 0) continue;
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
  pl.ports = w.ports;
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
    for (size_t i = ch.pool; i < fail_.size(); i += c_.pools_.size()) {
      std::fill(fail_[i].begin(), fail_[i].end(), INT_MAX);
      std::fill(fail_preempt_[i].begin(), fail_preempt_[i].end(), INT_MAX);
    }
  }
  Cluster::Alloc al;
  al.workload = w.id;
  al.org = w.org;
  al.project = w.project;
  al.cls = w.cls;
  al.ports = w.ports;
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
const Round::Outcome& Round::explain(const Ask& a, uint32_t p) {
  auto [slot, fresh] = explained_.try_emplace(MemoKey{(uint64_t(a.cid) << 32) | p, uint64_t(a.n), uint64_t(a.g), uint64_t(hold_state(a, p))});
  if (!fresh) return *slot;
  Outcome& out = *slot;
  const Pool& pool = c_.pools_[p];
  const std::string& type = type_name(a);
  const std::string& region = region_name(p);
  auto shape = [&] {
    return a.n == 1 ? cat(a.g, " ", type, " GPUs on one node") : cat(a.n, " nodes with ", a.g, " ", type, " GPUs each");
  };
  if (a.plain) {
    int k = pool.size_hist.at_least(a.g);
    int fa = pool.free_hist.at_least(a.g);
    int down = static_cast<int>(pool.nodes.size()) - pool.indexed_nodes - held_nodes_[p];
    auto write = [&] {
      std::string s;
      if (k < a.n) {
        s = cat("it can never fit: it needs ", shape(), " and ", region, " has ", k, " ", type, " ",
                plural(k, "node", "nodes"), " with ", a.g, " or more GPUs");
      } else {
        s = cat("no capacity of ", type, " in ", region, ": it needs ", shape(), "; ", fa, " ready nodes have ", a.g,
                " free (", pool.free, " GPUs free");
        if (pool.spot > 0) s += cat(", ", pool.spot, " run spot work");
        s += ")";
        if (down > 0) s += cat("; ", down, " ", plural(down, "node is", "nodes are"), " not ready, cordoned or draining");
      }
      add_hold_note(a, p, &s);
      return s;
    };
    out.first = k < a.n ? PendingCode::kInfeasible : PendingCode::kNoCapacity;
    // Every number in the sentence is in the key (k only changes with the inventory, which clears
    // the memo); the hold's owner, if named, is the check.
    int hs = hold_state(a, p);
    if (p < (1u << 24) && held_nodes_[p] < (1 << 30) && a.n >= 0 && down >= 0) {
      MemoKey key{kind_key(kExplainText, p | (uint64_t(hs) << 24) | (uint64_t(held_nodes_[p]) << 26)),
                           pair_key(a.n, a.g), pair_key(fa, pool.free), pair_key(pool.spot, down)};
      out.second = sentence(key, hs == 1 ? hold_owner_[p] : kEmptyString, write);
    } else {
      out.second = write();
    }
    return out;
  }
  if (!a.w->ports.empty()) {
    // Host ports: the nodes with room that a port in use rules out. Counted afresh (what holds a
    // port changes with placements), so this sentence is not kept in the cluster's memo.
    int room = 0, blocked = 0;
    std::vector<int> in_use;
    for (NodeIdx n : pool.nodes) {
      const Node& node = c_.nodes_[n];
      if (!node.indexed || node.free() < a.g || !static_ok(n, a, false)) continue;
      ++room;
      bool hit = false;
      for (int port : a.w->ports) {
        if (!node.uses_port(port)) continue;
        hit = true;
        if (std::find(in_use.begin(), in_use.end(), port) == in_use.end()) in_use.push_back(port);
      }
      blocked += hit;
    }
    if (room >= a.n && room - blocked < a.n) {
      std::sort(in_use.begin(), in_use.end());
      std::string ports = in_use.size() == 1 ? "port " : "ports ";
      for (size_t i = 0; i < in_use.size(); ++i) ports += cat(i ? ", " : "", in_use[i]);
      const char* is = in_use.size() == 1 ? " is" : " are";
      std::string s = blocked == room
                          ? cat(ports, is, " in use on every feasible node: it needs ", shape(), ", and each of the ", room,
                                " ", type, " ", plural(room, "node", "nodes"), " in ", region, " with ", a.g, " free ",
                                plural(a.g, "GPU", "GPUs"), " runs a workload on ", in_use.size() == 1 ? "it" : "them")
                          : cat(ports, is, " in use on ", blocked, " of the ", room, " ", type, " nodes in ", region,
                                " with ", a.g, " free ", plural(a.g, "GPU", "GPUs"), ": it needs ", shape(), " and ",
                                room - blocked, " ", plural(room - blocked, "is", "are"), " left");
      add_hold_note(a, p, &s);
      out = {PendingCode::kPortInUse, std::move(s)};
      return out;
    }
  }
  // A constrained workload's sentence says nothing of free capacity: it depends on the filter
  // counts (fixed until the inventory changes, which clears the memo), the constraints (the
  // check) and the hold.
  auto write = [&] {
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
      return Outcome{PendingCode::kInfeasible,
                     cat("it can never fit: it needs ", shape(), " and ", f.matching, " of ", pool.nodes.size(), " ",
                         type, " nodes in ", region, " match", filtered.empty() ? std::string() : " (" + filtered + ")")};
    }
    std::string s = cat("no capacity: it needs ", shape(), "; ", f.matching, " ", type, " nodes in ", region,
                        " match its zone, labels and taints, and too few of them have ", a.g, " free now");
    add_hold_note(a, p, &s);
    return Outcome{PendingCode::kNoCapacity, std::move(s)};
  };
  int hs = hold_state(a, p);
  if (p >= (1u << 24) || held_nodes_[p] >= (1 << 30) || a.n < 0) {
    out = write();
    return out;
  }
  std::string check = *constraint_names_[a.cid];
  if (hs == 1) check += "\x1f" + hold_owner_[p];
  MemoKey key{kind_key(kConstrainedText, p | (uint64_t(hs) << 24) | (uint64_t(held_nodes_[p]) << 26)),
                       pair_key(a.n, a.g), 0, 0};
  out = outcome(key, check, write);
  return out;
}

void Round::fail(const Ask& a, const std::vector<uint32_t>& pools) {
  const Workload& w = *a.w;
  // The same constraints, shape, pools and holds fail the same way; a power refusal, or a new
  // hold or block (a change that the next one would not make), is not kept.
  MemoKey key{a.cid, 0, (uint64_t(a.n) << 8) | uint64_t(a.g), 0};
  bool memo = power_zone_ < 0 && pools.size() <= 32;
  for (uint32_t p : pools) {
    if (p >= 64) memo = false;
    key[1] |= uint64_t(1) << (p & 63);
    key[3] = key[3] * 3 + uint64_t(hold_state(a, p));
  }
  if (memo) {
    if (const Outcome* o = failed_.find(key)) return pend(w, o->first, o->second);
  }
  Outcome out = explain(a, pools[0]);
  for (size_t i = 1; i < pools.size(); ++i) {
    const auto& [c, r] = explain(a, pools[i]);
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
      if (o_.backfill == Backfill::kStrict && blocked_by_[p].empty()) {
        blocked_by_[p] = w.id;
        memo = false;
      }
      if (o_.backfill == Backfill::kHold && hold_owner_[p].empty() && make_hold(a, p)) {
        out.second += cat("; first in line: ", held_nodes_[p], " ", plural(held_nodes_[p], "node is", "nodes are"),
                          " held for it");
        memo = false;  // later sentences about the pool mention the hold: see hold_state()
        break;
      }
    }
  }
  if (memo) *failed_.try_emplace(key).first = out;
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

// Workloads with the same zone, selector, tolerations and ports share an id for the round's
// caches.
uint32_t Round::constraints_id(const Workload& w) {
  std::string key = cat(w.zone, '|');
  for (const auto& [k, v] : w.node_selector) key += cat(k, '=', v, ',');
  key += '|';
  for (const Toleration& t : w.tolerations) key += cat(t.key, '=', t.value, ',');
  key += '|';
  for (int port : w.ports) key += cat(port, ',');
  auto [it, fresh] = constraints_.try_emplace(std::move(key), static_cast<uint32_t>(constraints_.size() + 1));
  if (fresh) {  // room in the failure caches for the new constraints
    constraint_names_.push_back(&it->first);
    size_t np = c_.pools_.size();
    fail_.resize(fail_.size() + np, std::vector<int>(65, INT_MAX));
    fail_preempt_.resize(fail_preempt_.size() + np, std::vector<int>(65, INT_MAX));
  }
  return it->second;
}

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
  a.plain = w.zone.empty() && w.node_selector.empty() && w.tolerations.empty() && w.ports.empty();
  uint32_t type = find(c_.types_, c_.type_by_id_, w.gpu_type);
  if (type == UINT32_MAX) return pend(w, PendingCode::kInfeasible, cat("the fleet has no ", w.gpu_type, " GPUs"));
  a.type = type;
  std::vector<uint32_t>& regions = regions_buf_;
  regions.clear();
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
  const std::vector<uint32_t>& in = regions.empty() ? regions_sorted_ : regions;
  if (!a.plain) a.cid = constraints_id(w);

  std::vector<uint32_t>& pools = pools_buf_;
  pools.clear();
  PendingCode code = PendingCode::kInfeasible;
  bool refused = false;
  std::string why;
  size_t nt = c_.types_.size();
  for (uint32_t r : in) {
    uint32_t p = pool_by_rt_[r * nt + a.type];
    if (p == UINT32_MAX || c_.pools_[p].nodes.empty()) continue;
    PendingCode c;
    if (admit(a, p, &c, refused ? nullptr : &why)) {
      pools.push_back(p);
    } else if (!refused) {
      refused = true;
      code = c;
    }
  }
  if (pools.empty()) {
    if (!refused) why = cat("no ", w.gpu_type, " GPUs in ", w.region.empty() ? std::string("any region") : "region " + w.region);
    return pend(w, code, std::move(why));
  }
  if (o_.backfill == Backfill::kStrict) {
    size_t open = 0;
    for (uint32_t p : pools) {
      if (blocked_by_[p].empty()) pools[open++] = p;
    }
    if (open == 0) {
      uint32_t p = pools[0];
      return pend(w, PendingCode::kQueued, sentence({kind_key(kQueuedText, p), 0, 0, 0}, blocked_by_[p], [&] {
        return cat("queued behind ", blocked_by_[p], ", first in line for ", w.gpu_type, " in ", region_name(p));
      }));
    }
    pools.resize(open);
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
        for (int port : pl.ports) {
          if (c.nodes_[n].uses_port(port)) {
            throw std::runtime_error("workload " + pl.workload + ": port " + std::to_string(port) + " is in use on node " +
                                     c.nodes_[n].id);
          }
        }
      }
      Cluster::Alloc a;
      a.workload = pl.workload;
      a.org = pl.org;
      a.project = pl.project;
      a.cls = pl.cls;
      a.parts = pl.gpus;
      a.ports = pl.ports;
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
