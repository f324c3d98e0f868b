// Fleet simulator: the scheduler library (src/scheduler) on a simulated fleet of 100,000 GPUs
// with a stream of mixed workloads, through the same schedule() and apply() the server calls.
// What it measures, how to read it and the latest figures: docs/PERFORMANCE.md.
//
//   build/bench/scheduler_bench [--runs 5] [--bursts 10] [--seed 1] [--hours 8] [--warmup-hours 2]
//                               [--queue 256] [--backfill hold|strict|greedy] [--nodes 12500] [--digest 1|2]
//
// Two phases per run, each on a fresh fleet:
//   burst:  an empty fleet and a queue holding 1.5x its GPUs in workloads, scheduled in one
//           round, then rounds until nothing more fits: raw placement throughput (--bursts
//           times, each on a fresh fleet, pooled).
//   steady: the queue never empties (kept at --queue workloads); workloads finish after an
//           exponential run time (mean 1 h) and each completion triggers a round; preempted
//           spot work goes back to the queue. Reports throughput, latencies and the share of
//           GPUs allocated, time-weighted over the simulated hours after the warm-up.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "scheduler/scheduler.h"

using namespace aicloud::sched;
using Clock = std::chrono::steady_clock;

namespace {

struct Config {
  int runs = 5;
  int bursts = 10;  // burst phases per run, each on a fresh fleet
  uint64_t seed = 1;
  double hours = 8, warmup_hours = 2;
  int queue = 256;
  Backfill backfill = Backfill::kHold;
  int nodes = 12500;
  int gpus_per_node = 8;
  int domain_nodes = 9;  // an NVL72 domain of 8-GPU nodes
  int regions = 4;
  int zones_per_region = 2;
  double mean_runtime_s = 3600;
  int digest = 0;  // print a hash of every plan (to check that a change to src/scheduler changes no decision)
};

const char* kRegions[] = {"us-east-1", "eu-west-1", "ap-northeast-1", "us-west-2", "eu-central-1", "ap-south-1"};
const int kReservationGpus = 2000;  // per reserving organization, one per region

// The workload mix: GPUs per workload, from 1 GPU to 512-GPU gangs, and how often each comes.
struct Shape {
  int nodes, gpus_per_node;
  double weight;
};
const Shape kShapes[] = {{1, 1, 25}, {1, 2, 10}, {1, 4, 15}, {1, 8, 20}, {2, 8, 10},
                         {4, 8, 8},  {8, 8, 6},  {16, 8, 3}, {32, 8, 2}, {64, 8, 1}};

Cluster build_fleet(const Config& cfg) {
  Cluster c;
  int per_region = cfg.nodes / cfg.regions;
  int id = 0;
  for (int r = 0; r < cfg.regions; ++r) {
    int in_region = per_region + (r < cfg.nodes % cfg.regions ? 1 : 0);
    for (int z = 0; z < cfg.zones_per_region; ++z) {
      std::string zone = std::string(kRegions[r]) + char('a' + z);
      int in_zone = in_region / cfg.zones_per_region + (z < in_region % cfg.zones_per_region ? 1 : 0);
      // A budget 5% above what every GPU of the zone draws at 1 kW: checked, rarely binding.
      c.add_zone(kRegions[r], zone, in_zone * cfg.gpus_per_node * 1.05);
      for (int k = 0; k < in_zone; ++k, ++id) {
        NodeSpec n;
        n.id = "node-" + std::to_string(id);
        n.region = kRegions[r];
        n.zone = zone;
        n.nvlink_domain = zone + "-nvl" + std::to_string(k / cfg.domain_nodes);
        n.gpu_type = "GB200";
        n.gpu_count = cfg.gpus_per_node;
        n.gpu_watts = 1000;
        n.labels = {{"ib", k % 2 ? "ndr" : "hdr"}};
        if (id % 100 == 37) n.taints = {{"maintenance", "true"}};  // 1% of nodes
        c.add_node(n);
      }
    }
  }
  std::vector<Reservation> resv;
  for (int r = 0; r < cfg.regions; ++r) {
    resv.push_back(Reservation{"resv_" + std::to_string(r), "org-resv" + std::to_string(r), "GB200", kRegions[r],
                               kReservationGpus, 0, int64_t(1) << 40, true});
  }
  c.set_reservations(resv);
  c.set_quotas({QuotaLimit{"org-0", "GB200", "", 3000}, QuotaLimit{"proj_1", "", "", 1000}});
  return c;
}

class Generator {
 public:
  Generator(const Config& cfg, uint64_t seed) : cfg_(cfg), rng_(seed) {
    std::vector<double> w;
    for (const Shape& s : kShapes) w.push_back(s.weight);
    shape_ = std::discrete_distribution<int>(w.begin(), w.end());
  }
  Workload next(int64_t now) {
    Workload w;
    w.id = "w" + std::to_string(++seq_);
    w.seq = seq_;
    w.submit_time = now;
    const Shape& s = kShapes[shape_(rng_)];
    w.nodes = s.nodes;
    w.gpus_per_node = s.gpus_per_node;
    w.gpu_type = "GB200";
    int region = pick(0, cfg_.regions - 1);
    int cls = pick(0, 99);
    if (cls < 10) {  // reserved: an organization with a reservation, in its region
      w.cls = Class::kReserved;
      w.org = "org-resv" + std::to_string(region);
      w.project = "proj_resv" + std::to_string(region);
      w.region = kRegions[region];
    } else {
      w.cls = cls < 70 ? Class::kOnDemand : Class::kSpot;
      int org = pick(0, 49);
      w.org = "org-" + std::to_string(org);
      w.project = "proj_" + std::to_string(org);
      w.region = pick(0, 9) ? kRegions[region] : "";  // 10% run in any region
    }
    w.priority = pick(0, 3);
    if (pick(0, 19) == 0) w.node_selector = {{"ib", "ndr"}};
    if (pick(0, 99) == 0) w.tolerations = {{"maintenance", ""}};
    return w;
  }
  double runtime() { return std::exponential_distribution<double>(1.0 / cfg_.mean_runtime_s)(rng_); }
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

 private:
  const Config& cfg_;
  std::mt19937_64 rng_;
  std::discrete_distribution<int> shape_;
  uint64_t seq_ = 0;
};

double percentile(std::vector<uint32_t>& v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// FNV-1a over everything a plan decided: placements (nodes, devices, tier, reason, victims),
// preemptions, pending workloads with code and reason, holds. Two builds of src/scheduler that
// make the same decisions print the same digest.
struct Digest {
  uint64_t h = 1469598103934665603ull;
  bool reasons = true;  // false: pending workloads' codes but not their sentences
  void bytes(const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  }
  void str(const std::string& s) { bytes(s.data(), s.size() + 1); }
  template <class T>
  void num(T v) { bytes(&v, sizeof v); }
  void plan(const Plan& p) {
    for (const Placement& pl : p.placements) {
      str(pl.workload);
      for (auto [n, m] : pl.gpus) {
        num(n);
        num(m);
      }
      num(static_cast<int>(pl.tier));
      str(pl.reason);
      for (const std::string& v : pl.preempts) str(v);
    }
    for (const Preemption& pr : p.preemptions) {
      str(pr.victim);
      str(pr.reason);
    }
    for (const Pending& pe : p.pending) {
      str(pe.workload);
      num(static_cast<int>(pe.code));
      if (reasons) str(pe.reason);
    }
    for (const Hold& h : p.holds) {
      str(h.workload);
      for (NodeIdx n : h.nodes) num(n);
    }
  }
};

struct Result {
  // burst
  int burst_placed = 0;
  double burst_s = 0, burst_rate = 0, burst_decision_p50_us = 0, burst_decision_p99_us = 0, burst_util = 0;
  // steady
  long rounds = 0, placed = 0, preempted = 0, decisions = 0;
  double sched_s = 0, rate = 0, decision_rate = 0, decision_p50_us = 0, decision_p99_us = 0, round_p50_us = 0, round_p99_us = 0,
         round_max_us = 0, util = 0, mean_pending = 0;
  std::map<Tier, long> tiers;
  std::map<PendingCode, long> pending_codes;  // in the last round
  uint64_t digest = 0;
};

// A measured steady-state round, in a function of its own so that a profiler can be told to
// look at these alone (valgrind --tool=callgrind --toggle-collect='*measured_round*').
[[gnu::noinline]] Plan measured_round(Cluster& c, const std::vector<Workload>& queue, const Options& opts) {
  Plan p = schedule(c, queue, opts);
  if (!apply(p, c)) std::abort();
  return p;
}

Result run_once(const Config& cfg, uint64_t seed) {
  Result res;
  Options opts;
  opts.backfill = cfg.backfill;
  opts.record_decision_times = true;

  // ---- Burst: an empty fleet, a queue worth 1.5 fleets; --bursts times on fresh fleets, so
  // that the timed part (tens of milliseconds each) is long enough to measure on a busy machine.
  Digest dig;
  dig.reasons = cfg.digest == 1;
  {
    std::vector<uint32_t> decisions;
    Clock::duration burst_time{};
    double util_sum = 0;
    for (int b = 0; b < cfg.bursts; ++b) {
      Cluster c = build_fleet(cfg);
      Generator gen(cfg, seed * 1000 + static_cast<uint64_t>(b));
      std::vector<Workload> queue;
      long demand = 0;
      while (demand < c.total_gpus() * 3 / 2) {
        queue.push_back(gen.next(0));
        demand += queue.back().gpus();
      }
      auto t0 = Clock::now();
      for (;;) {
        Plan p = schedule(c, queue, opts);
        if (!apply(p, c)) std::abort();
        if (cfg.digest) dig.plan(p);
        decisions.insert(decisions.end(), p.stats.decision_ns.begin(), p.stats.decision_ns.end());
        res.burst_placed += p.stats.placed;
        if (p.placements.empty()) break;
        std::unordered_set<std::string> placed;
        for (const Placement& pl : p.placements) placed.insert(pl.workload);
        std::erase_if(queue, [&](const Workload& w) { return placed.count(w.id) > 0; });
      }
      burst_time += Clock::now() - t0;
      util_sum += double(c.allocated_gpus()) / c.total_gpus();
    }
    res.burst_s = seconds(burst_time);
    res.burst_rate = res.burst_placed / res.burst_s;
    res.burst_decision_p50_us = percentile(decisions, 0.50) / 1000;
    res.burst_decision_p99_us = percentile(decisions, 0.99) / 1000;
    res.burst_util = util_sum / cfg.bursts;
  }

  // ---- Steady state: the queue never empties.
  Cluster c = build_fleet(cfg);
  Generator gen(cfg, seed + 1000);
  std::vector<Workload> queue;
  std::unordered_map<std::string, Workload> running;  // to re-queue preempted spot work
  std::unordered_map<std::string, uint64_t> generation;
  using End = std::tuple<double, uint64_t, std::string>;  // time, generation, workload
  std::priority_queue<End, std::vector<End>, std::greater<End>> ends;
  std::vector<uint32_t> decisions, rounds;
  double now = 0, end = (cfg.warmup_hours + cfg.hours) * 3600, warm = cfg.warmup_hours * 3600;
  double util_area = 0;
  long pending_sum = 0;
  Clock::duration sched_time{};
  Plan last;
  bool placed_last = true;
  while (now < end) {
    if (!placed_last) {  // nothing more fits: wait for the next completion(s)
      if (ends.empty()) break;
      double t = std::get<0>(ends.top());
      double next = std::min(t, end);
      if (now >= warm) util_area += double(c.allocated_gpus()) / c.total_gpus() * (next - now);
      else if (next > warm) util_area += double(c.allocated_gpus()) / c.total_gpus() * (next - warm);
      now = next;
      if (now >= end) break;
      while (!ends.empty() && std::get<0>(ends.top()) <= now) {
        auto [et, g, id] = ends.top();
        ends.pop();
        if (generation[id] != g) continue;  // preempted since
        c.release(id);
        running.erase(id);
      }
    }
    while (static_cast<int>(queue.size()) < cfg.queue) queue.push_back(gen.next(static_cast<int64_t>(now)));
    opts.now = static_cast<int64_t>(now);
    auto t0 = Clock::now();
    Plan p = now >= warm ? measured_round(c, queue, opts) : schedule(c, queue, opts);
    if (now < warm && !apply(p, c)) std::abort();
    auto dt = Clock::now() - t0;
    if (cfg.digest) dig.plan(p);
    placed_last = !p.placements.empty();
    if (now >= warm) {
      sched_time += dt;
      ++res.rounds;
      res.placed += p.stats.placed;
      res.preempted += p.stats.preempted;
      res.decisions += p.stats.evaluated;
      pending_sum += p.stats.pending;
      rounds.push_back(static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count()));
      decisions.insert(decisions.end(), p.stats.decision_ns.begin(), p.stats.decision_ns.end());
      for (const Placement& pl : p.placements) {
        if (pl.gpus.size() > 1) ++res.tiers[pl.tier];  // gangs only
      }
    }
    std::unordered_set<std::string> placed;
    for (const Placement& pl : p.placements) {
      placed.insert(pl.workload);
      for (const std::string& v : pl.preempts) {
        ++generation[v];  // its end event is stale now
        Workload w = running.at(v);
        running.erase(v);
        queue.push_back(std::move(w));  // back in line, with its original age
      }
    }
    std::vector<Workload> rest;
    rest.reserve(queue.size());
    for (Workload& w : queue) {
      if (placed.count(w.id)) {
        uint64_t g = ++generation[w.id];
        ends.emplace(now + gen.runtime(), g, w.id);
        running.emplace(w.id, std::move(w));
      } else {
        rest.push_back(std::move(w));
      }
    }
    queue = std::move(rest);
    last = std::move(p);
  }
  res.sched_s = seconds(sched_time);
  res.rate = res.placed / res.sched_s;
  res.decision_rate = res.decisions / res.sched_s;
  res.decision_p50_us = percentile(decisions, 0.50) / 1000;
  res.decision_p99_us = percentile(decisions, 0.99) / 1000;
  res.round_p50_us = percentile(rounds, 0.50) / 1000;
  res.round_p99_us = percentile(rounds, 0.99) / 1000;
  res.round_max_us = rounds.empty() ? 0 : *std::max_element(rounds.begin(), rounds.end()) / 1000.0;
  res.util = util_area / (end - warm);
  res.mean_pending = res.rounds ? double(pending_sum) / res.rounds : 0;
  for (const Pending& pe : last.pending) ++res.pending_codes[pe.code];
  res.digest = dig.h;
  return res;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: scheduler_bench [--runs N] [--bursts N] [--seed S] [--hours H] [--warmup-hours H] [--queue N]\n"
               "                       [--backfill hold|strict|greedy] [--nodes N] [--digest 1|2]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage();
    std::string v = argv[++i];
    if (a == "--runs") cfg.runs = std::stoi(v);
    else if (a == "--seed") cfg.seed = std::stoull(v);
    else if (a == "--bursts") cfg.bursts = std::stoi(v);
    else if (a == "--hours") cfg.hours = std::stod(v);
    else if (a == "--warmup-hours") cfg.warmup_hours = std::stod(v);
    else if (a == "--queue") cfg.queue = std::stoi(v);
    else if (a == "--nodes") cfg.nodes = std::stoi(v);
    else if (a == "--digest") cfg.digest = std::stoi(v);  // 1: everything, 2: no pending sentences
    else if (a == "--backfill") {
      if (v == "hold") cfg.backfill = Backfill::kHold;
      else if (v == "strict") cfg.backfill = Backfill::kStrict;
      else if (v == "greedy") cfg.backfill = Backfill::kGreedy;
      else usage();
    } else {
      usage();
    }
  }
  if (cfg.regions > 6 || cfg.runs < 1 || cfg.bursts < 1) usage();
  std::printf("fleet: %d nodes x %d GPUs = %d GPUs, NVLink domains of %d nodes, %d regions x %d zones; "
              "queue %d; backfill %s; %.1f h measured after %.1f h warm-up\n",
              cfg.nodes, cfg.gpus_per_node, cfg.nodes * cfg.gpus_per_node, cfg.domain_nodes, cfg.regions,
              cfg.zones_per_region, cfg.queue,
              cfg.backfill == Backfill::kHold ? "hold" : cfg.backfill == Backfill::kStrict ? "strict" : "greedy",
              cfg.hours, cfg.warmup_hours);
  std::vector<Result> results;
  for (int r = 0; r < cfg.runs; ++r) {
    Result x = run_once(cfg, cfg.seed + r);
    std::printf("run %d: burst %d placed in %.3f s = %.0f/s (decision p50 %.1f us, p99 %.1f us; %.1f%% allocated) | "
                "steady %ld rounds, %ld placed, %ld preempted, %.0f placements/s, %.0f decisions/s, decision p50 %.1f us "
                "p99 %.1f us, round p50 %.0f us p99 %.0f us max %.0f us, %.2f%% of GPUs allocated, %.0f pending on "
                "average\n",
                r + 1, x.burst_placed, x.burst_s, x.burst_rate, x.burst_decision_p50_us, x.burst_decision_p99_us,
                100 * x.burst_util, x.rounds, x.placed, x.preempted, x.rate, x.decision_rate, x.decision_p50_us,
                x.decision_p99_us,
                x.round_p50_us, x.round_p99_us, x.round_max_us, 100 * x.util, x.mean_pending);
    if (cfg.digest) std::printf("run %d: plan digest %016llx\n", r + 1, static_cast<unsigned long long>(x.digest));
    std::fflush(stdout);
    results.push_back(std::move(x));
  }
  auto med = [&](auto field) {
    std::vector<double> v;
    for (const Result& r : results) v.push_back(static_cast<double>(r.*field));
    return median(v);
  };
  std::printf("\nmedian of %d runs\n", cfg.runs);
  std::printf("  burst (empty fleet, 1.5 fleets queued):  %.0f placements/s, decision p50 %.1f us, p99 %.1f us, "
              "%.1f%% of GPUs allocated\n",
              med(&Result::burst_rate), med(&Result::burst_decision_p50_us), med(&Result::burst_decision_p99_us),
              100 * med(&Result::burst_util));
  std::printf("  steady (queue never empties):           %.0f placements/s, %.0f decisions/s, decision p50 %.1f us, "
              "p99 %.1f us; round (schedule + apply) p50 %.0f us, p99 %.0f us, max %.0f us\n",
              med(&Result::rate), med(&Result::decision_rate), med(&Result::decision_p50_us),
              med(&Result::decision_p99_us), med(&Result::round_p50_us), med(&Result::round_p99_us),
              med(&Result::round_max_us));
  std::printf("  GPUs allocated at saturation (time-weighted): %.2f%%\n", 100 * med(&Result::util));
  // The targets (issue 3, section 6), judged on the medians above.
  auto verdict = [](bool ok) { return ok ? "MET" : "MISSED"; };
  std::printf("targets: placements/s >= 10000: burst %s, steady %s | decision p99 < 10 ms: burst %s, steady %s | "
              ">= 95%% of GPUs allocated at saturation: %s\n",
              verdict(med(&Result::burst_rate) >= 10000), verdict(med(&Result::rate) >= 10000),
              verdict(med(&Result::burst_decision_p99_us) < 10000), verdict(med(&Result::decision_p99_us) < 10000),
              verdict(med(&Result::util) >= 0.95));
  const Result& r0 = results[0];
  long gangs = 0;
  for (auto& [t, n] : r0.tiers) gangs += n;
  std::printf("  run 1 multi-node gangs by tier:");
  for (auto& [t, n] : r0.tiers) std::printf(" %s %.1f%%", to_string(t), 100.0 * n / std::max(1L, gangs));
  std::printf("\n  run 1 pending reasons in the last round:");
  for (auto& [code, n] : r0.pending_codes) std::printf(" %s %ld", to_string(code), n);
  std::printf("\n");
  return 0;
}
