// The scheduler library (src/scheduler): one test per rule of issue 3, section 5, on small fleets
// built by hand, plus a randomized property test (fixed seed) that no GPU is ever double-booked.
// No server, no I/O: these run in milliseconds.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <map>
#include <random>
#include <set>

#include "scheduler/scheduler.h"

using namespace aicloud::sched;

namespace {

NodeSpec node(const std::string& id, const std::string& zone, const std::string& domain, int gpus = 8,
              const std::string& type = "H100", const std::string& region = "r1") {
  NodeSpec n;
  n.id = id;
  n.region = region;
  n.zone = zone;
  n.nvlink_domain = domain;
  n.gpu_type = type;
  n.gpu_count = gpus;
  return n;
}

Workload job(const std::string& id, int nodes, int gpus_per_node, Class cls = Class::kOnDemand,
             const std::string& org = "org-a", const std::string& type = "H100", const std::string& region = "r1") {
  static uint64_t seq = 0;
  Workload w;
  w.id = id;
  w.org = org;
  w.project = "proj_" + org;
  w.cls = cls;
  w.nodes = nodes;
  w.gpus_per_node = gpus_per_node;
  w.gpu_type = type;
  w.region = region;
  w.submit_time = 1000;
  w.seq = ++seq;
  return w;
}

// Occupies GPUs directly (as if restored from the store).
void run_on(Cluster& c, const std::string& id, Class cls, const std::vector<NodeGpus>& on,
            const std::string& org = "org-x") {
  c.add_running(Running{id, org, "proj_" + org, cls, on, {}});
}

const Placement* placed(const Plan& p, const std::string& id) {
  for (const Placement& pl : p.placements) {
    if (pl.workload == id) return &pl;
  }
  return nullptr;
}

const Pending* pending(const Plan& p, const std::string& id) {
  for (const Pending& pe : p.pending) {
    if (pe.workload == id) return &pe;
  }
  return nullptr;
}

std::set<std::string> nodes_of(const Cluster& c, const Placement& p) {
  std::set<std::string> s;
  for (auto [n, mask] : p.gpus) s.insert(c.node_id(n));
  return s;
}

// Schedules and applies; checks the books after.
Plan round(Cluster& c, const std::vector<Workload>& q, Options o = {}) {
  Plan p = schedule(c, q, o);
  std::string err;
  EXPECT_TRUE(apply(p, c, &err)) << err;
  EXPECT_EQ(c.check_invariants(), "");
  return p;
}

// Two zones; zone z1 has NVLink domains d1 and d2 of 4 nodes each, zone z2 domain d3 of 4 nodes.
Cluster three_domains() {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_zone("r1", "z2");
  for (int i = 0; i < 4; ++i) c.add_node(node("a" + std::to_string(i), "z1", "d1"));
  for (int i = 0; i < 4; ++i) c.add_node(node("b" + std::to_string(i), "z1", "d2"));
  for (int i = 0; i < 4; ++i) c.add_node(node("c" + std::to_string(i), "z2", "d3"));
  return c;
}

}  // namespace

TEST(Scheduler, GangGoesIntoOneNvlinkDomain) {
  Cluster c = three_domains();
  // d1 is partly used: the 3-node gang still fits there (3 whole nodes) and best fit picks it,
  // which keeps d2 and d3 whole.
  run_on(c, "old", Class::kOnDemand, {{"a0", {0}}});
  Plan p = round(c, {job("gang", 3, 8)});
  const Placement* pl = placed(p, "gang");
  ASSERT_NE(pl, nullptr);
  EXPECT_EQ(pl->tier, Tier::kDomain);
  EXPECT_EQ(nodes_of(c, *pl), (std::set<std::string>{"a1", "a2", "a3"}));
  EXPECT_NE(pl->reason.find("one NVLink domain d1"), std::string::npos) << pl->reason;
  for (auto [n, mask] : pl->gpus) EXPECT_EQ(mask, 0xffu);
}

TEST(Scheduler, GangSpreadsWithReasonWhenNoDomainFits) {
  Cluster c = three_domains();
  // 6 nodes: no domain has them, zone z1 has 8.
  Plan p = round(c, {job("six", 6, 8)});
  const Placement* pl = placed(p, "six");
  ASSERT_NE(pl, nullptr);
  EXPECT_EQ(pl->tier, Tier::kZone);
  for (const auto& n : nodes_of(c, *pl)) EXPECT_NE(n[0], 'c') << n;  // all in z1
  EXPECT_NE(pl->reason.find("one zone z1 over 2 NVLink domains: no domain had 6 nodes"), std::string::npos) << pl->reason;

  // 5 more nodes: z1 has 2 left, z2 has 4: spread over both zones, with the reason.
  Plan q = round(c, {job("five", 5, 8)});
  const Placement* pq = placed(q, "five");
  ASSERT_NE(pq, nullptr);
  EXPECT_EQ(pq->tier, Tier::kRegion);
  EXPECT_EQ(nodes_of(c, *pq).size(), 5u);
  EXPECT_NE(pq->reason.find("spread over 2 zones"), std::string::npos) << pq->reason;
  EXPECT_NE(pq->reason.find("no domain or zone had 5 nodes"), std::string::npos) << pq->reason;
}

TEST(Scheduler, BinPackingKeepsWholeNodesAndDomainsFree) {
  Cluster c = three_domains();
  run_on(c, "busy", Class::kOnDemand, {{"b2", {0, 1, 2, 3, 4, 5}}});  // b2 has 2 free
  // Small jobs go to the fullest node that fits, and single GPUs into the same 2-GPU hole.
  Plan p = round(c, {job("two", 1, 2)});
  EXPECT_EQ(nodes_of(c, *placed(p, "two")), std::set<std::string>{"b2"});
  // The 4-GPU job takes an aligned half of a node of d2 (no longer whole anyway), and the 1-GPU
  // jobs fill the other half of that same node rather than breaking into a whole one.
  Plan q = round(c, {job("four", 1, 4), job("one", 1, 1), job("one2", 1, 1)});
  EXPECT_EQ(nodes_of(c, *placed(q, "four")), std::set<std::string>{"b0"});
  EXPECT_EQ(placed(q, "four")->gpus[0].second, 0x0fu);
  EXPECT_EQ(nodes_of(c, *placed(q, "one")), std::set<std::string>{"b0"});
  EXPECT_EQ(nodes_of(c, *placed(q, "one2")), std::set<std::string>{"b0"});
  EXPECT_EQ(placed(q, "one")->gpus[0].second | placed(q, "one2")->gpus[0].second, 0x30u);
  // d1 and d3 stay whole: a 4-node gang still fits in one domain.
  Plan r = round(c, {job("gang", 4, 8)});
  ASSERT_NE(placed(r, "gang"), nullptr);
  EXPECT_EQ(placed(r, "gang")->tier, Tier::kDomain);
}

TEST(Scheduler, QueueOrderIsClassThenPriorityThenAge) {
  Workload spot = job("spot", 1, 8, Class::kSpot);
  spot.priority = 9;
  Workload od_low = job("od-low", 1, 8);
  Workload od_high = job("od-high", 1, 8);
  od_high.priority = 5;
  Workload od_old = job("od-old", 1, 8);
  od_old.submit_time = 10;
  Workload resv = job("resv", 1, 8, Class::kReserved);
  std::vector<Workload> q = {spot, od_low, od_high, od_old, resv};
  std::sort(q.begin(), q.end(), [](const Workload& a, const Workload& b) { return queue_before(a, b); });
  std::vector<std::string> ids;
  for (auto& w : q) ids.push_back(w.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"resv", "od-high", "od-old", "od-low", "spot"}));

  // One free node: the on-demand workload with the highest priority gets it.
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  Plan p = round(c, {spot, od_low, od_high, od_old});
  ASSERT_EQ(p.placements.size(), 1u);
  EXPECT_EQ(p.placements[0].workload, "od-high");
  // Same priority: the oldest.
  c.release("od-high");
  p = round(c, {spot, od_low, od_old});
  ASSERT_EQ(p.placements.size(), 1u);
  EXPECT_EQ(p.placements[0].workload, "od-old");
}

TEST(Scheduler, BackfillDoesNotDelayTheHead) {
  // Two 8-GPU nodes, each half used. The head needs a whole node; small jobs wait behind it.
  auto fleet = [] {
    Cluster c;
    c.add_zone("r1", "z1");
    c.add_node(node("n1", "z1", ""));
    c.add_node(node("n2", "z1", ""));
    run_on(c, "x1", Class::kOnDemand, {{"n1", {0, 1, 2, 3}}});
    run_on(c, "x2", Class::kOnDemand, {{"n2", {0, 1, 2, 3, 4, 5}}});
    return c;
  };
  Workload head = job("head", 1, 8);
  head.priority = 1;
  std::vector<Workload> q = {head, job("s1", 1, 2), job("s2", 1, 2), job("s3", 1, 2)};

  Cluster c = fleet();
  Plan p = round(c, q);
  ASSERT_NE(pending(p, "head"), nullptr);
  EXPECT_NE(pending(p, "head")->reason.find("first in line: 1 node is held for it"), std::string::npos)
      << pending(p, "head")->reason;
  ASSERT_EQ(p.holds.size(), 1u);
  EXPECT_EQ(c.node_id(p.holds[0].nodes[0]), "n1");  // the node closest to free
  // Backfill: only what fits outside the held node runs (one 2-GPU job on n2), nothing on n1.
  ASSERT_EQ(p.placements.size(), 1u);
  EXPECT_EQ(nodes_of(c, p.placements[0]), std::set<std::string>{"n2"});
  EXPECT_NE(pending(p, "s2")->reason.find("held for head"), std::string::npos) << pending(p, "s2")->reason;
  // When n1's job ends the head starts at once: backfill did not delay it.
  c.release("x1");
  p = round(c, {head, job("s2", 1, 2), job("s3", 1, 2)});
  ASSERT_NE(placed(p, "head"), nullptr);
  EXPECT_EQ(nodes_of(c, *placed(p, "head")), std::set<std::string>{"n1"});

  // Greedy placement, for contrast: the small jobs take n1 and the head is still blocked.
  Cluster g = fleet();
  Options greedy;
  greedy.backfill = Backfill::kGreedy;
  round(g, q, greedy);
  g.release("x1");
  p = round(g, {head}, greedy);
  EXPECT_EQ(placed(p, "head"), nullptr);

  // Strict: nothing behind the head runs in its pool.
  Cluster s = fleet();
  Options strict;
  strict.backfill = Backfill::kStrict;
  p = round(s, q, strict);
  EXPECT_TRUE(p.placements.empty());
  EXPECT_EQ(pending(p, "s1")->code, PendingCode::kQueued);
}

TEST(Scheduler, HoldIsKeptAcrossRounds) {
  Cluster c;
  c.add_zone("r1", "z1");
  for (int i = 0; i < 4; ++i) c.add_node(node("n" + std::to_string(i), "z1", ""));
  for (int i = 0; i < 4; ++i) run_on(c, "x" + std::to_string(i), Class::kOnDemand, {{"n" + std::to_string(i), {0, 1, 2, 3}}});
  Workload head = job("head", 2, 8);
  Plan p = round(c, {head});
  ASSERT_EQ(p.holds.size(), 1u);
  auto held = p.holds[0].nodes;
  ASSERT_EQ(held.size(), 2u);
  // Another node frees up more than the held ones; the hold stays where it was, so the held
  // nodes keep draining toward the head.
  for (int i = 0; i < 4; ++i) {
    if (std::count(held.begin(), held.end(), *c.find_node("n" + std::to_string(i))) == 0) {
      c.release("x" + std::to_string(i));
      break;
    }
  }
  p = round(c, {head, job("small", 1, 1)});
  ASSERT_EQ(p.holds.size(), 1u);
  EXPECT_EQ(p.holds[0].nodes, held);
  for (auto [n, mask] : placed(p, "small")->gpus) {
    EXPECT_EQ(std::count(held.begin(), held.end(), n), 0);
  }
}

TEST(Scheduler, OnDemandPreemptsTheCheapestSpotVictims) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  c.add_node(node("n2", "z1", ""));
  run_on(c, "spot-big", Class::kSpot, {{"n1", {0, 1, 2, 3}}});
  run_on(c, "spot-a", Class::kSpot, {{"n1", {4, 5}}});
  run_on(c, "spot-b", Class::kSpot, {{"n1", {6}}});
  run_on(c, "od", Class::kOnDemand, {{"n1", {7}}});
  run_on(c, "spot-gang", Class::kSpot, {{"n2", {0, 1, 2, 3, 4, 5, 6, 7}}});
  // Two GPUs: spot-a alone (2 GPUs, 1 victim) beats spot-b + anything, spot-big and the gang.
  Plan p = round(c, {job("want2", 1, 2)});
  ASSERT_NE(placed(p, "want2"), nullptr);
  ASSERT_EQ(p.preemptions.size(), 1u);
  EXPECT_EQ(p.preemptions[0].victim, "spot-a");
  EXPECT_EQ(p.preemptions[0].by, "want2");
  EXPECT_EQ(placed(p, "want2")->preempts, std::vector<std::string>{"spot-a"});
  EXPECT_EQ(placed(p, "want2")->gpus[0].second, 0x30u);  // spot-a's GPUs
  EXPECT_FALSE(c.is_running("spot-a"));
  EXPECT_TRUE(c.is_running("spot-big"));

  // A spot workload never preempts; on-demand work is never a victim.
  Plan q = round(c, {job("spot-new", 1, 1, Class::kSpot)});
  EXPECT_TRUE(q.preemptions.empty());
  EXPECT_EQ(pending(q, "spot-new")->code, PendingCode::kNoCapacity);
  // Eight GPUs on one node: the whole spot gang (8 GPUs, 1 victim) rather than spot-big and
  // spot-b and the on-demand job on n1 (impossible anyway).
  Plan r = round(c, {job("want8", 1, 8)});
  ASSERT_EQ(r.preemptions.size(), 1u);
  EXPECT_EQ(r.preemptions[0].victim, "spot-gang");
  // Four GPUs: spot-big (4 GPUs, 1 victim); spot-b plus on-demand GPUs would not do.
  Plan s = round(c, {job("want4", 1, 4)});
  ASSERT_EQ(s.preemptions.size(), 1u);
  EXPECT_EQ(s.preemptions[0].victim, "spot-big");
  EXPECT_TRUE(c.is_running("spot-b"));
  EXPECT_TRUE(c.is_running("od"));
}

TEST(Scheduler, PreemptionPrefersFewerGpusThenFewerVictims) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  c.add_node(node("n2", "z1", ""));
  // n1: four 1-GPU spot jobs and an on-demand half. n2: one 4-GPU spot job + a 4-GPU spot job
  // that is part of a 12-GPU gang (freeing it costs 12).
  for (int i = 0; i < 4; ++i) run_on(c, "s" + std::to_string(i), Class::kSpot, {{"n1", {i}}});
  run_on(c, "od", Class::kOnDemand, {{"n1", {4, 5, 6, 7}}});
  c.add_node(node("n3", "z1", ""));
  run_on(c, "gang", Class::kSpot, {{"n2", {0, 1, 2, 3}}, {"n3", {0, 1, 2, 3, 4, 5, 6, 7}}});
  run_on(c, "four", Class::kSpot, {{"n2", {4, 5, 6, 7}}});
  // 4 GPUs: n1 costs 4 GPUs / 4 victims, n2 costs 4 GPUs / 1 victim ("four"): n2 wins.
  Plan p = round(c, {job("w", 1, 4)});
  ASSERT_EQ(p.preemptions.size(), 1u);
  EXPECT_EQ(p.preemptions[0].victim, "four");
  EXPECT_NE(placed(p, "w")->reason.find("preempts 1 spot workload (4 GPUs)"), std::string::npos) << placed(p, "w")->reason;
}

TEST(Scheduler, ReservationIsHonouredWhileSpotFillsItsIdlePart) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  c.add_node(node("n2", "z1", ""));
  c.set_reservations({Reservation{"resv_1", "org-r", "H100", "r1", 8, 0, 1'000'000, true}});
  Options o;
  o.now = 5000;
  // Spot work may use the idle reserved GPUs: the whole fleet.
  Plan p = round(c, {job("spot1", 1, 8, Class::kSpot, "org-s"), job("spot2", 1, 8, Class::kSpot, "org-s")}, o);
  EXPECT_EQ(p.placements.size(), 2u);
  // On-demand may take spot's GPUs, but only those not reserved: one node's worth.
  p = round(c, {job("od1", 1, 8, Class::kOnDemand, "org-o"), job("od2", 1, 8, Class::kOnDemand, "org-o")}, o);
  ASSERT_NE(placed(p, "od1"), nullptr);
  ASSERT_EQ(p.preemptions.size(), 1u);
  ASSERT_NE(pending(p, "od2"), nullptr);
  EXPECT_EQ(pending(p, "od2")->code, PendingCode::kReservedCapacity);
  EXPECT_NE(pending(p, "od2")->reason.find("waiting behind reservations"), std::string::npos) << pending(p, "od2")->reason;
  // The reservation's owner gets its 8 GPUs at once, preempting the last spot job.
  p = round(c, {job("r1", 1, 8, Class::kReserved, "org-r")}, o);
  ASSERT_NE(placed(p, "r1"), nullptr);
  ASSERT_EQ(p.preemptions.size(), 1u);
  EXPECT_FALSE(c.is_running("spot1"));
  EXPECT_FALSE(c.is_running("spot2"));
  // Beyond its reservation: pending with the reason. Another org's reserved class: no reservation.
  p = round(c, {job("r2", 1, 1, Class::kReserved, "org-r"), job("r3", 1, 1, Class::kReserved, "org-o")}, o);
  EXPECT_EQ(pending(p, "r2")->code, PendingCode::kReservationFull);
  EXPECT_EQ(pending(p, "r3")->code, PendingCode::kNoReservation);
  // Reserved work is never preempted, not even by a high-priority on-demand job.
  Workload urgent = job("urgent", 1, 8, Class::kOnDemand, "org-o");
  urgent.priority = 100;
  p = round(c, {urgent}, o);
  EXPECT_TRUE(p.preemptions.empty());
  EXPECT_TRUE(c.is_running("r1"));
  EXPECT_EQ(pending(p, "urgent")->code, PendingCode::kNoCapacity);
  // Outside its window the reservation protects nothing.
  o.now = 2'000'000;
  c.release("r1");
  p = round(c, {job("od3", 1, 8, Class::kOnDemand, "org-o")}, o);
  EXPECT_NE(placed(p, "od3"), nullptr);
}

TEST(Scheduler, OverQuotaStaysPendingWithReason) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  c.add_node(node("n2", "z1", ""));
  c.set_quotas({QuotaLimit{"org-a", "H100", "r1", 8}, QuotaLimit{"proj_org-b", "", "", 2}});
  run_on(c, "held", Class::kOnDemand, {{"n1", {0, 1, 2, 3, 4, 5}}}, "org-a");
  Plan p = round(c, {job("more", 1, 4), job("fits", 1, 2), job("b1", 1, 2, Class::kSpot, "org-b"),
                     job("b2", 1, 1, Class::kSpot, "org-b")});
  ASSERT_NE(pending(p, "more"), nullptr);
  EXPECT_EQ(pending(p, "more")->code, PendingCode::kQuota);
  EXPECT_EQ(pending(p, "more")->reason, "over quota: org-a may hold 8 H100 GPUs in r1, holds 6 and this workload needs 4");
  EXPECT_NE(placed(p, "fits"), nullptr);  // 6 + 2 = 8: at the limit is fine
  EXPECT_NE(placed(p, "b1"), nullptr);
  EXPECT_EQ(pending(p, "b2")->code, PendingCode::kQuota);  // the project's quota, counted in-round
  // Quota frees up when work ends.
  c.release("held");
  p = round(c, {job("more", 1, 4)});
  EXPECT_NE(placed(p, "more"), nullptr);
}

TEST(Scheduler, FeasibilityTaintsLabelsStatesAndPower) {
  Cluster c;
  c.add_zone("r1", "z1", 6.0);  // 6 kW: 8 GPUs at 700 W is 5.6 kW
  c.add_zone("r1", "z2");
  NodeSpec tainted = node("tainted", "z2", "");
  tainted.taints = {{"dedicated", "org-t"}};
  c.add_node(tainted);
  NodeSpec labelled = node("labelled", "z2", "");
  labelled.labels = {{"ib", "ndr"}};
  c.add_node(labelled);
  c.add_node(node("cordoned", "z2", ""));
  c.add_node(node("notready", "z2", ""));
  c.add_node(node("draining", "z2", ""));
  c.set_node_state("cordoned", NodeState::kCordoned);
  c.set_node_state("notready", NodeState::kNotReady);
  c.set_node_state("draining", NodeState::kDraining);
  c.add_node(node("p1", "z1", ""));
  c.add_node(node("p2", "z1", ""));

  Workload in_z2 = job("z2job", 1, 8);
  in_z2.zone = "z2";
  Workload tol = job("tol", 1, 8);
  tol.tolerations = {{"dedicated", ""}};
  tol.zone = "z2";
  Workload sel = job("sel", 1, 8);
  sel.node_selector = {{"ib", "ndr"}};
  Workload sel_none = job("sel-none", 1, 8);
  sel_none.node_selector = {{"ib", "hdr"}};
  Plan p = round(c, {in_z2, tol, sel, sel_none});
  // The untolerated taint and the three unready states leave only "labelled" for z2job, but
  // "sel" wants it too; z2job is first (same priority, older), so sel waits.
  EXPECT_EQ(nodes_of(c, *placed(p, "z2job")), std::set<std::string>{"labelled"});
  EXPECT_EQ(nodes_of(c, *placed(p, "tol")), std::set<std::string>{"tainted"});
  EXPECT_EQ(pending(p, "sel")->code, PendingCode::kNoCapacity);
  EXPECT_EQ(pending(p, "sel-none")->code, PendingCode::kInfeasible);
  EXPECT_NE(pending(p, "sel-none")->reason.find("without the selected labels"), std::string::npos)
      << pending(p, "sel-none")->reason;

  // Power: z1 fits one busy 8-GPU node (5.6 of 6 kW), not two.
  Workload a = job("pa", 1, 8);
  a.zone = "z1";
  Workload b = job("pb", 1, 8);
  b.zone = "z1";
  p = round(c, {a, b});
  EXPECT_NE(placed(p, "pa"), nullptr);
  ASSERT_NE(pending(p, "pb"), nullptr);
  EXPECT_EQ(pending(p, "pb")->code, PendingCode::kPower);
  EXPECT_NE(pending(p, "pb")->reason.find("power budget: zone z1 uses 5.6 of 6.0 kW"), std::string::npos)
      << pending(p, "pb")->reason;
  EXPECT_NEAR(c.zone_power_used_kw("z1"), 5.6, 1e-9);

  // A node coming back is used again.
  c.set_node_state("cordoned", NodeState::kReady);
  p = round(c, {sel_none, job("back", 1, 8)});
  EXPECT_EQ(nodes_of(c, *placed(p, "back")), std::set<std::string>{"cordoned"});
}

TEST(Scheduler, BadRequestsGetClearReasons) {
  Cluster c = three_domains();
  Workload zero = job("zero", 1, 0);
  Workload big = job("big", 13, 8);
  Workload wide = job("wide", 1, 16);
  Workload type = job("type", 1, 1, Class::kOnDemand, "org-a", "B200");
  Workload region = job("region", 1, 1, Class::kOnDemand, "org-a", "H100", "r9");
  Plan p = round(c, {zero, big, wide, type, region});
  EXPECT_EQ(pending(p, "zero")->code, PendingCode::kInvalid);
  EXPECT_EQ(pending(p, "big")->code, PendingCode::kInfeasible);
  EXPECT_EQ(pending(p, "big")->reason, "it can never fit: it needs 13 nodes with 8 H100 GPUs each and r1 has 12 H100 nodes with 8 or more GPUs");
  EXPECT_EQ(pending(p, "wide")->code, PendingCode::kInfeasible);
  EXPECT_EQ(pending(p, "type")->reason, "the fleet has no B200 GPUs");
  EXPECT_EQ(pending(p, "region")->reason, "no region r9");
  EXPECT_TRUE(p.placements.empty());
  // Already running: reported, not placed twice.
  round(c, {job("once", 1, 1)});
  p = round(c, {job("once", 1, 1)});
  EXPECT_EQ(pending(p, "once")->code, PendingCode::kInvalid);
}

TEST(Scheduler, AnyRegionAndScheduleLeavesTheClusterAsItWas) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_zone("r2", "z2");
  c.add_node(node("n1", "z1", "", 8, "H100", "r1"));
  c.add_node(node("n2", "z2", "", 8, "H100", "r2"));
  run_on(c, "x", Class::kOnDemand, {{"n1", {0, 1, 2, 3, 4, 5, 6, 7}}});
  Workload any = job("any", 1, 4);
  any.region = "";
  int64_t before = c.allocated_gpus();
  Plan p = schedule(c, {any, job("r1", 1, 1)});
  EXPECT_EQ(c.allocated_gpus(), before);  // schedule() rolled back
  EXPECT_EQ(c.check_invariants(), "");
  EXPECT_FALSE(c.is_running("any"));
  ASSERT_NE(placed(p, "any"), nullptr);
  EXPECT_EQ(nodes_of(c, *placed(p, "any")), std::set<std::string>{"n2"});
  ASSERT_TRUE(apply(p, c));
  EXPECT_EQ(c.allocated_gpus(), before + 4);
  auto r = c.running("any");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->on[0].node, "n2");
  EXPECT_EQ(r->on[0].gpus, (std::vector<int>{0, 1, 2, 3}));
  auto offers = c.offers(0);
  ASSERT_EQ(offers.size(), 2u);
  EXPECT_EQ(offers[1].region, "r2");
  EXPECT_EQ(offers[1].free_gpus, 4);
}

// Offers, per class, for one organization: on-demand never counts GPUs kept for reservations
// (another organization's, or its own: its reserved work takes those), and says exactly what the
// scheduler admits; reserved shows the organization's unused reservation.
TEST(Scheduler, OffersByClassKeepReservedGpusForTheirOwners) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  c.add_node(node("n2", "z1", ""));
  c.set_reservations({Reservation{"resv_1", "org-r", "H100", "r1", 8, 0, 1'000'000, true},
                      Reservation{"resv_2", "org-r", "H100", "r1", 4, 2'000'000, 3'000'000, true},   // not yet
                      Reservation{"resv_3", "org-o", "H100", "r1", 4, 0, 1'000'000, false}});       // not approved
  run_on(c, "spot", Class::kSpot, {{"n1", {0, 1, 2, 3}}}, "org-s");
  run_on(c, "mine", Class::kReserved, {{"n2", {0, 1}}}, "org-r");
  auto offer = [&](const std::string& org) {
    auto v = c.offers(5000, org);
    EXPECT_EQ(v.size(), 1u);
    return v.at(0);
  };
  Offer r = offer("org-r");
  EXPECT_EQ(r.nodes, 2);
  EXPECT_EQ(r.total_gpus, 16);
  EXPECT_EQ(r.free_gpus, 10);
  EXPECT_EQ(r.spot_gpus, 4);
  EXPECT_EQ(r.reserved_headroom, 6);  // 8 reserved, 2 used
  EXPECT_EQ(r.reserved_gpus, 8);
  EXPECT_EQ(r.reserved_unused, 6);
  EXPECT_EQ(r.reserved_available(), 6);
  EXPECT_EQ(r.on_demand_gpus(), 8);  // 10 free + 4 spot - 6 kept, and all of it free
  Offer o = offer("org-o");
  EXPECT_EQ(o.reserved_gpus, 0);
  EXPECT_EQ(o.reserved_available(), 0);
  EXPECT_EQ(o.on_demand_gpus(), 8);
  EXPECT_EQ(c.offers(5000)[0].reserved_gpus, 0);
  // What the scheduler admits: 8 one-GPU on-demand jobs, none preempting; the 9th waits.
  std::vector<Workload> q;
  for (int i = 0; i < 9; ++i) q.push_back(job("od" + std::to_string(i), 1, 1, Class::kOnDemand, "org-o"));
  Options opts;
  opts.now = 5000;
  Plan p = round(c, q, opts);
  EXPECT_EQ(p.placements.size(), 8u);
  EXPECT_TRUE(p.preemptions.empty());
  EXPECT_EQ(pending(p, "od8")->code, PendingCode::kReservedCapacity);
  EXPECT_EQ(offer("org-o").on_demand_gpus(), 0);
  // The reservation is a guarantee: what spot work borrows counts for its owner.
  EXPECT_EQ(offer("org-r").reserved_available(), 6);  // 2 free + 4 spot
  p = round(c, {job("r6", 1, 4, Class::kReserved, "org-r"), job("r2", 1, 2, Class::kReserved, "org-r")}, opts);
  EXPECT_EQ(p.placements.size(), 2u);
  EXPECT_EQ(offer("org-r").reserved_available(), 0);
  // An ended reservation keeps nothing back.
  EXPECT_EQ(c.offers(1'500'000, "org-r")[0].reserved_gpus, 0);
}

// Services with a fixed port: two never share a node, whether placed in one round, in different
// rounds, or restored from the store; the port comes back when its holder exits.
TEST(Scheduler, FixedPortsNeverShareANode) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  auto svc = [](const std::string& id, int port, int nodes = 1, int gpus = 1) {
    Workload w = job(id, nodes, gpus);
    w.ports = {port};
    return w;
  };
  Plan p = round(c, {svc("web1", 8080), svc("web2", 8080), svc("api", 9090)});
  EXPECT_NE(placed(p, "web1"), nullptr);
  EXPECT_NE(placed(p, "api"), nullptr);  // another port: no collision
  ASSERT_NE(pending(p, "web2"), nullptr);
  EXPECT_EQ(pending(p, "web2")->code, PendingCode::kPortInUse);
  EXPECT_EQ(pending(p, "web2")->reason,
            "port 8080 is in use on every feasible node: it needs 1 H100 GPUs on one node, and each of the 1 H100 node "
            "in r1 with 1 free GPU runs a workload on it");
  EXPECT_EQ(c.running("web1")->ports, std::vector<int>{8080});
  // Work without a port still fits beside them.
  p = round(c, {svc("web2", 8080), job("batch", 1, 2)});
  EXPECT_NE(placed(p, "batch"), nullptr);
  EXPECT_EQ(pending(p, "web2")->code, PendingCode::kPortInUse);
  // A second node: web2 goes there; web3, in the same round, finds 8080 taken on both.
  c.add_node(node("n2", "z1", ""));
  p = round(c, {svc("web2", 8080), svc("web3", 8080)});
  ASSERT_NE(placed(p, "web2"), nullptr);
  EXPECT_EQ(nodes_of(c, *placed(p, "web2")), std::set<std::string>{"n2"});
  EXPECT_EQ(placed(p, "web2")->ports, std::vector<int>{8080});
  EXPECT_EQ(pending(p, "web3")->code, PendingCode::kPortInUse);
  // A gang that needs the port on 2 of 3 nodes, 2 of which hold it.
  c.add_node(node("n3", "z1", ""));
  p = round(c, {svc("pair", 8080, 2, 4)});
  EXPECT_EQ(pending(p, "pair")->code, PendingCode::kPortInUse);
  EXPECT_NE(pending(p, "pair")->reason.find("port 8080 is in use on 2 of the 3 H100 nodes in r1 with 4 free GPUs: it "
                                            "needs 2 nodes with 4 H100 GPUs each and 1 is left"),
            std::string::npos)
      << pending(p, "pair")->reason;
  // Restored from the store, a service holds its port as well; the exit frees it.
  c.add_running(Running{"restored", "org-x", "proj_x", Class::kOnDemand, {{"n3", {7}}}, {8080}});
  EXPECT_EQ(c.check_invariants(), "");
  p = round(c, {svc("web3", 8080)});
  EXPECT_EQ(pending(p, "web3")->code, PendingCode::kPortInUse);
  ASSERT_TRUE(c.release("web1"));
  p = round(c, {svc("web3", 8080)});
  ASSERT_NE(placed(p, "web3"), nullptr);
  EXPECT_EQ(nodes_of(c, *placed(p, "web3")), std::set<std::string>{"n1"});
  // apply() refuses a plan whose port was taken since schedule().
  p = schedule(c, {svc("late", 6060)});
  ASSERT_EQ(p.placements.size(), 1u);
  std::string node_id = c.node_id(p.placements[0].gpus[0].first);
  c.add_running(Running{"early", "org-x", "proj_x", Class::kOnDemand, {{node_id, {6}}}, {6060}});
  std::string err;
  EXPECT_FALSE(apply(p, c, &err));
  EXPECT_NE(err.find("port 6060 is in use on node " + node_id), std::string::npos) << err;
  EXPECT_EQ(c.check_invariants(), "");
}

// The queue's order does not depend on how the pending list comes: any order, any priority
// (negative, huge), any submit time (before 1970, far future), ties broken by seq then id.
TEST(Scheduler, QueueOrderHoldsForAnyInput) {
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (bool extreme : {false, true}) {
    for (bool shuffled : {false, true}) {
      std::vector<Workload> q;
      for (int i = 0; i < 600; ++i) {
        Workload w = job("w" + std::to_string(pick(0, 50)) + "-" + std::to_string(i), 1, 1,
                         static_cast<Class>(pick(0, 2)), "org-a", "T4");  // no T4 in the fleet: all pend
        w.priority = extreme ? (pick(0, 1) ? INT32_MAX - pick(0, 2) : INT32_MIN + pick(0, 2)) : pick(0, 3);
        w.submit_time = extreme ? (pick(0, 1) ? -int64_t(pick(0, 5)) : (int64_t(1) << 50) + pick(0, 5)) : pick(0, 40);
        w.seq = static_cast<uint64_t>(pick(0, 300));  // ties too
        q.push_back(w);
      }
      if (!shuffled) {  // the store's order: by submit time and seq
        std::sort(q.begin(), q.end(), [](const Workload& a, const Workload& b) {
          return std::tie(a.submit_time, a.seq) < std::tie(b.submit_time, b.seq);
        });
      }
      Cluster c = three_domains();
      Plan p = schedule(c, q);
      ASSERT_EQ(p.pending.size(), q.size());
      std::sort(q.begin(), q.end(), queue_before);
      for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(p.pending[i].workload, q[i].id) << i;
    }
  }
}

// Pending reasons are remembered between rounds (the cluster keeps the sentences), but only
// under everything they say: when the numbers, a quota or a hold change, so does the reason.
TEST(Scheduler, PendingReasonsFollowTheFleetAcrossRounds) {
  Cluster c;
  c.add_zone("r1", "z1");
  c.add_node(node("n1", "z1", ""));
  c.add_node(node("n2", "z1", ""));
  run_on(c, "a", Class::kOnDemand, {{"n1", {0, 1, 2, 3}}});
  run_on(c, "b", Class::kOnDemand, {{"n2", {0, 1, 2, 3, 4, 5}}});
  Options greedy;
  greedy.backfill = Backfill::kGreedy;
  Plan p = round(c, {job("big", 1, 8)}, greedy);
  EXPECT_EQ(pending(p, "big")->reason,
            "no capacity of H100 in r1: it needs 8 H100 GPUs on one node; 0 ready nodes have 8 free (6 GPUs free)");
  p = round(c, {job("big", 1, 8)}, greedy);  // the same: from the memo
  EXPECT_EQ(pending(p, "big")->reason,
            "no capacity of H100 in r1: it needs 8 H100 GPUs on one node; 0 ready nodes have 8 free (6 GPUs free)");
  c.release("b");
  c.set_node_state("n2", NodeState::kCordoned);
  p = round(c, {job("big", 1, 8)}, greedy);
  EXPECT_EQ(pending(p, "big")->reason,
            "no capacity of H100 in r1: it needs 8 H100 GPUs on one node; 0 ready nodes have 8 free (4 GPUs free); "
            "1 node is not ready, cordoned or draining");
  // A hold names its owner, whoever it is this round.
  c.set_node_state("n2", NodeState::kReady);
  run_on(c, "b", Class::kOnDemand, {{"n2", {0, 1, 2, 3, 4, 5}}});
  p = round(c, {job("first", 1, 8), job("next", 1, 8)});
  EXPECT_NE(pending(p, "next")->reason.find("held for first, first in line"), std::string::npos) << pending(p, "next")->reason;
  Workload before = job("before", 1, 8);
  before.priority = 5;
  p = round(c, {job("first", 1, 8), job("next", 1, 8), before});
  EXPECT_NE(pending(p, "next")->reason.find("held for before, first in line"), std::string::npos) << pending(p, "next")->reason;
  // Quotas: a new limit, a new sentence.
  c.set_quotas({QuotaLimit{"org-x", "", "", 8}});
  p = round(c, {job("q", 1, 1, Class::kOnDemand, "org-x")});
  ASSERT_NE(pending(p, "q"), nullptr);
  EXPECT_EQ(pending(p, "q")->reason, "over quota: org-x may hold 8 GPUs, holds 10 and this workload needs 1");
  c.set_quotas({QuotaLimit{"org-x", "", "", 9}});
  p = round(c, {job("q", 1, 1, Class::kOnDemand, "org-x")});
  ASSERT_NE(pending(p, "q"), nullptr);
  EXPECT_EQ(pending(p, "q")->reason, "over quota: org-x may hold 9 GPUs, holds 10 and this workload needs 1");
}

TEST(Scheduler, ApplyIsAllOrNothing) {
  Cluster c = three_domains();
  Plan p = schedule(c, {job("a", 1, 8), job("b", 4, 8)});
  ASSERT_EQ(p.placements.size(), 2u);
  // The cluster changes between schedule() and apply(): b's first node is taken.
  NodeIdx taken = p.placements[1].gpus[0].first;
  run_on(c, "intruder", Class::kOnDemand, {{c.node_id(taken), {0}}});
  int64_t before = c.allocated_gpus();
  std::string err;
  EXPECT_FALSE(apply(p, c, &err));
  EXPECT_NE(err.find("already taken"), std::string::npos) << err;
  EXPECT_EQ(c.allocated_gpus(), before);
  EXPECT_FALSE(c.is_running("a"));  // a was applied first, then rolled back
  EXPECT_EQ(c.check_invariants(), "");
}

// Random fleets, random queues, random exits, through schedule + apply, many rounds: the books
// stay consistent, no two placements share a GPU, every placement obeys its filters, and
// reserved and on-demand work is never preempted.
TEST(Scheduler, NoGpuIsEverDoubleBooked) {
  std::mt19937 rng(20240611);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Cluster c;
  const std::vector<std::string> types = {"H100", "GB200"};
  for (int r = 0; r < 2; ++r) {
    for (int z = 0; z < 2; ++z) c.add_zone("r" + std::to_string(r), "r" + std::to_string(r) + "z" + std::to_string(z), z ? 60.0 : 0);
  }
  std::map<std::string, NodeSpec> specs;
  int id = 0;
  for (int r = 0; r < 2; ++r) {
    for (int z = 0; z < 2; ++z) {
      for (int d = 0; d < 5; ++d) {
        std::string type = types[pick(0, 1)];
        int gpus = type == "GB200" ? 4 : 8;
        int nodes = pick(1, 6);
        bool own = pick(0, 3) == 0;
        for (int k = 0; k < nodes; ++k) {
          NodeSpec n = node("n" + std::to_string(id++), "r" + std::to_string(r) + "z" + std::to_string(z),
                            own ? "" : "r" + std::to_string(r) + "z" + std::to_string(z) + "d" + std::to_string(d) + type,
                            gpus, type, "r" + std::to_string(r));
          if (pick(0, 9) == 0) n.taints = {{"t", "x"}};
          if (pick(0, 4) == 0) n.labels = {{"ib", "ndr"}};
          c.add_node(n);
          specs[n.id] = n;
        }
      }
    }
  }
  c.set_reservations({Reservation{"resv", "org-r", "H100", "r0", 24, 0, 1 << 30, true}});
  c.set_quotas({QuotaLimit{"org-q", "", "", 40}});
  std::map<std::string, Workload> queue;
  std::map<std::string, Class> classes;
  int next = 0;
  int placements = 0, preemptions = 0;
  for (int round_no = 0; round_no < 300; ++round_no) {
    for (int k = pick(0, 8); k > 0; --k) {
      const char* orgs[] = {"org-a", "org-b", "org-q", "org-r"};
      Workload w = job("w" + std::to_string(next++), 1, 1, static_cast<Class>(pick(0, 2)), orgs[pick(0, 3)],
                       types[pick(0, 1)], pick(0, 4) ? "r" + std::to_string(pick(0, 1)) : "");
      int shape = pick(0, 9);
      w.nodes = shape < 6 ? 1 : shape < 9 ? pick(2, 4) : pick(5, 12);
      w.gpus_per_node = w.nodes > 1 ? (w.gpu_type == "GB200" ? 4 : 8) : pick(1, w.gpu_type == "GB200" ? 4 : 8);
      w.priority = pick(0, 3);
      if (pick(0, 9) == 0) w.node_selector = {{"ib", "ndr"}};
      if (pick(0, 9) == 0) w.tolerations = {{"t", ""}};
      if (pick(0, 9) == 0) w.ports = {pick(0, 1) ? 8080 : 9090};
      queue[w.id] = w;
    }
    std::vector<Workload> q;
    for (auto& [k, w] : queue) q.push_back(w);
    Options o;
    o.now = 100;
    o.backfill = static_cast<Backfill>(round_no % 3);
    Plan p = schedule(c, q, o);
    ASSERT_EQ(c.check_invariants(), "");
    // The plan itself: every workload answered once, no GPU twice, filters obeyed.
    ASSERT_EQ(p.placements.size() + p.pending.size(), q.size());
    std::map<NodeIdx, uint64_t> taken, victim_gpus;
    std::set<std::string> victims;
    for (const Preemption& pr : p.preemptions) {
      ASSERT_EQ(classes.at(pr.victim), Class::kSpot) << pr.victim;
      ASSERT_TRUE(victims.insert(pr.victim).second) << "preempted twice: " << pr.victim;
      auto victim = c.running(pr.victim);
      ASSERT_TRUE(victim.has_value());
      for (const NodeGpus& ng : victim->on) victim_gpus[*c.find_node(ng.node)] |= mask_of(ng.gpus);
    }
    for (const Placement& pl : p.placements) {
      const Workload& w = queue.at(pl.workload);
      ASSERT_EQ(static_cast<int>(pl.gpus.size()), w.nodes);
      if (!pl.preempts.empty()) {
        ASSERT_NE(w.cls, Class::kSpot);
      }
      for (auto [n, mask] : pl.gpus) {
        const NodeSpec& s = specs.at(c.node_id(n));
        ASSERT_EQ(std::popcount(mask), w.gpus_per_node);
        ASSERT_EQ(s.gpu_type, w.gpu_type);
        if (!w.region.empty()) {
          ASSERT_EQ(s.region, w.region);
        }
        ASSERT_EQ(c.node_state(n), NodeState::kReady);
        for (auto& [k, v] : w.node_selector) ASSERT_TRUE(std::count(s.labels.begin(), s.labels.end(), std::pair(k, v)));
        if (!s.taints.empty()) {
          ASSERT_FALSE(w.tolerations.empty());
        }
        // Free now, or held by a victim of this plan.
        ASSERT_EQ(mask & ~c.node_free_mask(n) & ~victim_gpus[n], 0u);
        ASSERT_EQ(taken[n] & mask, 0u) << "GPU double-booked in one plan";
        taken[n] |= mask;
      }
    }
    std::string err;
    ASSERT_TRUE(apply(p, c, &err)) << err;
    ASSERT_EQ(c.check_invariants(), "");
    // No host port is held twice on a node.
    std::set<std::pair<std::string, int>> ports;
    for (const Placement& pl : p.placements) classes[pl.workload] = pl.cls;
    for (auto& [w, cls] : classes) {
      auto r = c.running(w);
      if (!r) continue;
      for (const NodeGpus& ng : r->on) {
        for (int port : r->ports) ASSERT_TRUE(ports.emplace(ng.node, port).second) << "port " << port << " twice on " << ng.node;
      }
    }
    for (const Placement& pl : p.placements) {
      ASSERT_EQ(pl.ports, queue.at(pl.workload).ports);
      queue.erase(pl.workload);
      ++placements;
    }
    for (const std::string& v : victims) {
      ASSERT_FALSE(c.is_running(v));
      ++preemptions;
    }
    // Some running work exits; a node now and then changes state.
    std::vector<std::string> running;
    for (auto& [w, cls] : classes) {
      if (c.is_running(w)) running.push_back(w);
    }
    for (const std::string& w : running) {
      if (pick(0, 5) == 0) {
        ASSERT_TRUE(c.release(w));
      }
    }
    if (pick(0, 4) == 0) {
      auto it = specs.begin();
      std::advance(it, pick(0, static_cast<int>(specs.size()) - 1));
      c.set_node_state(it->first, static_cast<NodeState>(pick(0, 3) == 0 ? pick(1, 3) : 0));
    }
    if (pick(0, 9) == 0) {  // a taint comes or goes (the untainted index follows)
      auto it = specs.begin();
      std::advance(it, pick(0, static_cast<int>(specs.size()) - 1));
      it->second.taints = it->second.taints.empty() ? std::vector<Taint>{{"t", "x"}} : std::vector<Taint>{};
      c.set_node_taints(it->first, it->second.taints);
    }
    ASSERT_EQ(c.check_invariants(), "");
  }
  EXPECT_GT(placements, 300);
  EXPECT_GT(preemptions, 5);
}
