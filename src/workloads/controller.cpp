#include "workloads/controller.h"

#include <algorithm>
#include <map>
#include <set>

#include "scheduler/scheduler.h"
#include "util/log.h"
#include "util/thread_name.h"
#include "util/time.h"
#include "workloads/workloads.h"

namespace aicloud {

namespace {

bool live(const Object& a) {
  std::string ph = a.data.value("phase", "");
  return ph != "exited" && ph != "lost";
}

sched::Class class_of(const std::string& s) {
  return s == "reserved" ? sched::Class::kReserved : s == "spot" ? sched::Class::kSpot : sched::Class::kOnDemand;
}

std::string zone_of(const Object& node) {
  return node.data["zone"].is_string() ? node.data["zone"].get<std::string>() : node.parent_id + "/default";
}

// The scheduler's sentence for a pending workload, with the stored objects it is about: the
// quota that holds it back, the reservation that is not active yet or awaits approval.
std::string explain(const sched::Pending& p, const Object& w, const std::vector<Object>& reservations,
                    const std::vector<Object>& quotas, int64_t now) {
  json spec = w.data.value("spec", json::object());
  json t = spec.value("gpu_type", json());
  std::string type = t.is_string() ? t.get<std::string>() : "";
  std::string region = spec.value("region", "");
  if (p.code == sched::PendingCode::kQuota) {
    // The scheduler names the scope, type, region and limit ("over quota: SCOPE may hold N
    // [TYPE ]GPUs[ in REGION], ..."): the quota with exactly those.
    for (const auto& q : quotas) {
      std::string scope = q.project_id.empty() ? q.org_id : q.project_id;
      std::string qt = q.data.value("gpu_type", ""), qr = q.data.value("region", "");
      std::string says = "over quota: " + scope + " may hold " + std::to_string(q.data.value("max_gpus", 0)) + " " +
                         (qt.empty() ? "" : qt + " ") + "GPUs" + (qr.empty() ? "" : " in " + qr) + ",";
      if (p.reason.rfind(says, 0) == 0) return p.reason + " (quota " + q.id + ")";
    }
  } else if (p.code == sched::PendingCode::kNoReservation) {
    std::string more;
    for (const auto& r : reservations) {
      if (r.org_id != w.org_id || r.data.value("gpu_type", "") != type || r.data.value("region", "") != region) continue;
      std::string st = r.data.value("status", "");
      int64_t start = r.data.value("start_time", int64_t(0));
      if (st == "approved" && start > now) {
        more = "; reservation " + r.id + " starts at " + std::to_string(start) + " (unix time)";
        break;
      }
      if (st == "pending_approval" && more.empty()) more = "; reservation " + r.id + " awaits the operator's approval";
    }
    return p.reason + more;
  }
  return p.reason;
}

}  // namespace

SchedulerController::SchedulerController(Store& store, NodeLeases& leases, ControllerOptions opts)
    : store_(store), leases_(leases), opts_(opts) {}

SchedulerController::~SchedulerController() { stop(); }

void SchedulerController::start() {
  thread_ = std::thread([this] {
    name_this_thread("scheduler");
    std::unique_lock lk(mu_);
    while (!stopping_) {
      lk.unlock();
      try {
        round();
      } catch (const std::exception& e) {
        spdlog::error("scheduler round failed: {}", e.what());
      }
      lk.lock();
      cv_.wait_for(lk, std::chrono::milliseconds(opts_.round_ms), [this] { return stopping_; });
    }
  });
}

void SchedulerController::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void SchedulerController::round() {
  int64_t now = now_ms();

  // 1 and 2: lost nodes, released holds. Level-triggered: recomputed from what is stored.
  store_.write([&](Tx& tx) {
    ListQuery aq;
    aq.kind = "assignment";
    std::set<std::string> touched;
    for (auto& a : tx.all(aq)) {
      if (!live(a)) continue;
      if (!leases_.alive(a.parent_id, now)) {
        a.data["phase"] = "lost";
        a.data["lost_at"] = now;
        tx.update(a);
        touched.insert(a.data.value("workload_id", ""));
      }
    }
    ListQuery wq;
    wq.kind = "workload";
    for (auto& w : tx.all(wq)) {
      json& st = w.data["status"];
      if (touched.count(w.id)) reconcile_workload(tx, w);
      // A placement that preempted spot work starts once every victim has exited.
      if (st.contains("waiting_for")) {
        bool clear = true;
        for (const auto& v : st["waiting_for"]) {
          auto victim = tx.get("workload", v.get<std::string>());
          if (victim && !workload_terminal(victim->data["status"].value("phase", ""))) clear = false;
        }
        if (clear) {
          st.erase("waiting_for");
          tx.update(w);
          for (auto& a : assignments_of(tx, w)) {
            if (a.data.value("desired", "") == "hold") {
              a.data["desired"] = "run";
              tx.update(a);
            }
          }
        }
      }
    }
  });

  // 3: the scheduler's view.
  sched::Cluster cluster;
  std::vector<sched::Workload> pending;
  std::map<std::string, std::string> node_names;
  std::vector<Object> reservations, quotas;  // for explaining pending work
  store_.read([&](Tx& tx) {
    ListQuery zq;
    zq.kind = "zone";
    for (const auto& z : tx.all(zq)) {
      cluster.add_zone(z.parent_id, z.lookup, z.data.value("power_budget_kw", 0.0));
    }
    ListQuery nq;
    nq.kind = "node";
    for (const auto& n : tx.all(nq)) {
      std::string zone = zone_of(n);
      if (!n.data["zone"].is_string()) cluster.add_zone(n.parent_id, zone);
      sched::NodeSpec spec;
      spec.id = n.id;
      spec.region = n.parent_id;
      spec.zone = zone;
      spec.nvlink_domain = n.data["nvlink_domain"].is_string() ? n.data["nvlink_domain"].get<std::string>() : "";
      spec.gpu_type = n.data["gpu_type"].is_string() ? n.data["gpu_type"].get<std::string>() : "cpu";
      spec.gpu_count = int(n.data.value("gpus", json::array()).size());
      for (auto it = n.data["labels"].begin(); it != n.data["labels"].end(); ++it) {
        spec.labels.emplace_back(it.key(), it->get<std::string>());
      }
      std::string admin = n.data.value("admin_state", "schedulable");
      spec.state = !leases_.alive(n.id, now) ? sched::NodeState::kNotReady
                   : admin == "cordoned"     ? sched::NodeState::kCordoned
                   : admin == "draining"     ? sched::NodeState::kDraining
                                             : sched::NodeState::kReady;
      cluster.add_node(spec);
      node_names[n.id] = n.data.value("address", n.data.value("name", n.id));
    }
    // What runs: live assignments grouped by workload.
    ListQuery aq;
    aq.kind = "assignment";
    std::map<std::string, sched::Running> running;
    for (const auto& a : tx.all(aq)) {
      if (!live(a)) continue;
      auto& r = running[a.data.value("workload_id", "")];
      r.workload = a.data.value("workload_id", "");
      r.org = a.org_id;
      r.project = a.project_id;
      auto gpus = a.data.value("gpus", std::vector<int>{});
      if (!gpus.empty()) r.on.push_back({a.parent_id, gpus});
      // A service's host port (its spec's, or the one its node chose and reported): no other
      // service with that fixed port may be placed on the node while it runs.
      auto pit = a.data.find("port");
      int port = pit != a.data.end() && pit->is_number_integer() ? pit->get<int>() : 0;
      if (port != 0 && std::find(r.ports.begin(), r.ports.end(), port) == r.ports.end()) r.ports.push_back(port);
    }
    ListQuery wq;
    wq.kind = "workload";
    for (const auto& w : tx.all(wq)) {
      const json& spec = w.data["spec"];
      std::string phase = w.data["status"].value("phase", "pending");
      auto it = running.find(w.id);
      if (it != running.end()) {
        it->second.cls = class_of(spec.value("class", "on_demand"));
        if (!it->second.on.empty()) {
          try {
            cluster.add_running(it->second);
          } catch (const std::exception& e) {
            spdlog::error("workload {}: {}", w.id, e.what());
          }
        }
      }
      if (phase != "pending") continue;
      sched::Workload s;
      s.id = w.id;
      s.org = w.org_id;
      s.project = w.project_id;
      s.cls = class_of(spec.value("class", "on_demand"));
      s.priority = spec.value("priority", 0);
      s.submit_time = w.created_at;
      s.seq = uint64_t(w.seq);
      s.nodes = spec.value("nodes", 1);
      s.gpus_per_node = spec.value("gpus_per_node", 0);
      s.gpu_type = spec["gpu_type"].is_string() ? spec["gpu_type"].get<std::string>() : "";
      s.region = spec.value("region", "");
      s.zone = spec["zone"].is_string() ? spec["zone"].get<std::string>() : "";
      auto pit = spec.find("port");
      if (w.data.value("type", "") == "service" && pit != spec.end() && pit->is_number_integer() && pit->get<int>() != 0) {
        s.ports = {pit->get<int>()};
      }
      pending.push_back(std::move(s));
    }
    // Policy: approved reservations (the scheduler keeps to those active at `now`) and quotas.
    ListQuery rq;
    rq.kind = "reservation";
    std::vector<sched::Reservation> resvs;
    for (auto& r : tx.all(rq)) {
      const json& d = r.data;
      std::string st = d.value("status", "");
      int64_t end = d.value("end_time", int64_t(0));
      if (st == "approved" || st == "pending_approval") {
        if (end > now / 1000) reservations.push_back(r);
      }
      if (st != "approved" || end <= now / 1000) continue;
      resvs.push_back({r.id, r.org_id, d.value("gpu_type", ""), d.value("region", ""), d.value("gpus", 0),
                       d.value("start_time", int64_t(0)), end, true});
    }
    cluster.set_reservations(std::move(resvs));
    ListQuery qq;
    qq.kind = "quota";
    std::vector<sched::QuotaLimit> limits;
    for (auto& q : tx.all(qq)) {
      limits.push_back({q.project_id.empty() ? q.org_id : q.project_id, q.data.value("gpu_type", ""),
                        q.data.value("region", ""), q.data.value("max_gpus", 0)});
      quotas.push_back(std::move(q));
    }
    cluster.set_quotas(std::move(limits));
  });
  if (pending.empty()) return;

  sched::Options so;
  so.now = now / 1000;
  sched::Plan plan = sched::schedule(cluster, pending, so);

  // 4: the plan, in one transaction.
  store_.write([&](Tx& tx) {
    for (const auto& p : plan.placements) {
      auto w = tx.get("workload", p.workload);
      if (!w || w->data["status"].value("phase", "") != "pending") continue;
      std::vector<RankPlacement> ranks;
      for (const auto& ng : sched::describe(cluster, p)) ranks.push_back({ng.node, node_names[ng.node], ng.gpus});
      std::string master = ranks.empty() ? "127.0.0.1" : node_names[ranks.front().node_id];
      w->data["status"]["placement_reason"] = p.reason;
      w->data["status"].erase("reason_code");
      place_workload(tx, *w, ranks, master);
      if (!p.preempts.empty()) {
        w->data["status"]["waiting_for"] = p.preempts;
        w->data["status"]["reason"] = "waiting for preempted spot work to exit";
        tx.update(*w);
        for (auto& a : assignments_of(tx, *w)) {
          a.data["desired"] = "hold";
          tx.update(a);
        }
      }
    }
    for (const auto& v : plan.preemptions) {
      auto w = tx.get("workload", v.victim);
      if (!w || workload_terminal(w->data["status"].value("phase", ""))) continue;
      w->data["status"]["phase"] = "preempting";
      w->data["status"]["reason"] = "preempted by " + v.by + ": " + v.reason;
      tx.update(*w);
      stop_assignments(tx, *w, opts_.preemption_notice_ms);
    }
    for (const auto& p : plan.pending) {
      auto w = tx.get("workload", p.workload);
      if (!w || w->data["status"].value("phase", "") != "pending") continue;
      std::string reason = explain(p, *w, reservations, quotas, now / 1000);
      std::string code = sched::to_string(p.code);
      json& st = w->data["status"];
      if (st["reason"] != reason || st["reason_code"] != code) {  // either may be null: no value()
        st["reason"] = reason;
        st["reason_code"] = code;
        tx.update(*w);
      }
    }
  });
}

}  // namespace aicloud
