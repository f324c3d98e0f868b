// The gateway's in-memory view of where each model is served: deployments and their ready
// replicas. The deployments controller writes it (set/remove) as replicas become ready or go
// away; the gateway reads it on every request without touching the store.
//
// Picking is least-outstanding-requests among the ready replicas of the deployments that the
// caller's organization may use, in the regions the request may use. Deployments are indexed by
// model name, so a request looks only at the deployments of its model however many there are.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "util/per_thread.h"

namespace aicloud::gateway {

struct Replica {
  std::string id;        // the service workload (or its rank) that runs the engine
  std::string host;      // where the gateway reaches it
  uint16_t port = 0;
  std::string api_key;   // the engine's --api-key: known only to the gateway
  std::string region;
  std::shared_ptr<std::atomic<int>> outstanding = std::make_shared<std::atomic<int>>(0);
};

struct Deployment {
  std::string id;          // dep_...
  std::string model;       // the name clients send as "model"
  std::string owner_org;   // "" = a catalog deployment every organization may use
  std::vector<Replica> replicas;  // ready ones only
  bool scale_to_zero = false;     // may have no replica and wake on a request
  // The most requests in flight at once since outstanding_by_deployment() last looked (kept, like
  // each replica's `outstanding`, across set()).
  std::shared_ptr<std::atomic<int>> peak = std::make_shared<std::atomic<int>>(0);
};

// What pick() found: a replica of a deployment as the directory knew it then. The snapshot is
// shared and never changed (set() replaces it), so a pick copies a pointer, not the replica.
struct Pick {
  std::shared_ptr<const Deployment> deployment;
  const Replica* r = nullptr;  // in *deployment; its `outstanding` already counts this request: call release()
  const Replica& replica() const { return *r; }
  const std::string& deployment_id() const { return deployment->id; }
};

class ReplicaDirectory {
 public:
  // Replaces what is known of one deployment (the controller calls it on every change).
  void set(Deployment d);
  void remove(const std::string& deployment_id);

  // Whether a model of this name is served to this organization at all (ready or not).
  bool serves(const std::string& model, const std::string& org) const;
  // The least loaded ready replica of a deployment of `model` usable by `org`, excluding the
  // replica ids in `exclude` (ones that just failed). nullopt if none is ready now.
  std::optional<Pick> pick(const std::string& model, const std::string& org,
                           const std::vector<std::string>& exclude = {}) const;
  static void release(const Pick& p) { p.r->outstanding->fetch_sub(1); }

  // Scale from zero: asks the controller to wake the deployments of `model` for `org`.
  void on_wake(std::function<void(const std::string& deployment_id)> f);
  void wake(const std::string& model, const std::string& org) const;
  // Calls f (from the thread that calls set()) the next time a deployment of `model` usable by
  // `org` has a ready replica; returns a handle for cancel_waiter(). (Another organization's
  // deployment of the same model name does not count: it would wake the waiter for nothing.)
  uint64_t wait_ready(const std::string& model, const std::string& org, std::function<void()> f);
  void cancel_waiter(uint64_t id);

  // Demand per deployment, the autoscaler's and the idle timer's signal: the most requests in
  // flight at once since the last call (so that requests shorter than the controller's round are
  // not missed between two looks), plus the requests waiting for it to wake. Resets the peaks.
  std::map<std::string, int> outstanding_by_deployment();

 private:
  static bool usable(const Deployment& d, const std::string& model, const std::string& org) {
    return d.model == model && (d.owner_org.empty() || d.owner_org == org);
  }
  // The deployments usable by `org` under the name `model`, from an index by model name (by_model_,
  // under mu_, or a thread's View).
  template <typename Index, typename F>
  static void for_each_usable(const Index& by_model, const std::string& model, const std::string& org, F&& f) {
    auto it = by_model.find(model);
    if (it == by_model.end()) return;
    for (const auto& d : it->second) {
      if (usable(*d, model, org)) f(d);
    }
  }
  void unindex(const Deployment& d);

  using Snapshot = std::shared_ptr<const Deployment>;
  // What a thread picks from: its own copies of the deployments by model, remade when version_
  // has moved since. A pick took mu_ and a reference to a snapshot shared by every io thread: two
  // cache lines that each request moved between the threads' caches. A copy shares its replicas'
  // counters (and its peak) with the directory's snapshot, so the loads it sees are everyone's.
  struct View {
    uint64_t directory = 0, version = 0;
    std::unordered_map<std::string, std::vector<Snapshot>> by_model;
  };
  const View& view() const;

  mutable std::mutex mu_;
  std::atomic<uint64_t> version_{0};  // moved (under mu_) by every change of the deployments
  const uint64_t id_ = new_instance_id();
  std::map<std::string, Snapshot> deployments_;
  // model name -> its deployments (the same snapshots as deployments_).
  std::map<std::string, std::vector<Snapshot>, std::less<>> by_model_;
  std::function<void(const std::string&)> wake_;
  struct Waiter {
    std::string model, org;
    std::function<void()> f;
  };
  std::map<uint64_t, Waiter> waiters_;
  uint64_t next_waiter_ = 1;
};

}  // namespace aicloud::gateway
