#include "gateway/replicas.h"

#include <algorithm>

namespace aicloud::gateway {

void ReplicaDirectory::set(Deployment d) {
  std::vector<std::function<void()>> ready;
  {
    std::lock_guard lk(mu_);
    // Keep the in-flight counters of replicas that stay, so that picking stays fair.
    auto old = deployments_.find(d.id);
    if (old != deployments_.end()) {
      d.peak = old->second->peak;
      for (auto& r : d.replicas) {
        for (const auto& o : old->second->replicas) {
          if (o.id == r.id) r.outstanding = o.outstanding;
        }
      }
    }
    if (!d.replicas.empty()) {
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (usable(d, it->second.model, it->second.org)) {
          ready.push_back(std::move(it->second.f));
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (old != deployments_.end()) unindex(*old->second);  // (its model may have changed)
    // A new snapshot: picks still holding the old one keep it as it was.
    auto stored = std::make_shared<const Deployment>(std::move(d));
    by_model_[stored->model].push_back(stored);
    auto& slot = deployments_[stored->id];
    slot = std::move(stored);
    version_.fetch_add(1);
  }
  for (auto& f : ready) f();
}

void ReplicaDirectory::unindex(const Deployment& d) {
  auto it = by_model_.find(d.model);
  if (it == by_model_.end()) return;
  std::erase_if(it->second, [&](const Snapshot& s) { return s.get() == &d; });
  if (it->second.empty()) by_model_.erase(it);
}

void ReplicaDirectory::remove(const std::string& deployment_id) {
  std::lock_guard lk(mu_);
  auto it = deployments_.find(deployment_id);
  if (it == deployments_.end()) return;
  unindex(*it->second);
  deployments_.erase(it);
  version_.fetch_add(1);
}

const ReplicaDirectory::View& ReplicaDirectory::view() const {
  thread_local View v;
  if (v.directory != id_ || v.version != version_.load()) {
    std::lock_guard lk(mu_);
    v.by_model.clear();
    for (const auto& [model, deployments] : by_model_) {
      auto& mine = v.by_model[model];
      for (const auto& d : deployments) mine.push_back(std::make_shared<const Deployment>(*d));
    }
    v.directory = id_;
    v.version = version_.load();
  }
  return v;
}

bool ReplicaDirectory::serves(const std::string& model, const std::string& org) const {
  bool found = false;
  for_each_usable(view().by_model, model, org, [&](const Snapshot&) { found = true; });
  return found;
}

std::optional<Pick> ReplicaDirectory::pick(const std::string& model, const std::string& org,
                                           const std::vector<std::string>& exclude) const {
  const Replica* best = nullptr;
  const Snapshot* best_dep = nullptr;
  int best_load = 0;
  for_each_usable(view().by_model, model, org, [&](const Snapshot& d) {
    for (const auto& r : d->replicas) {
      if (std::find(exclude.begin(), exclude.end(), r.id) != exclude.end()) continue;
      int load = r.outstanding->load();
      if (!best || load < best_load) {
        best = &r;
        best_dep = &d;
        best_load = load;
      }
    }
  });
  if (!best) return std::nullopt;
  best->outstanding->fetch_add(1);
  int total = 0;
  for (const auto& r : (*best_dep)->replicas) total += r.outstanding->load();
  std::atomic<int>& peak = *(*best_dep)->peak;
  for (int seen = peak.load(); total > seen && !peak.compare_exchange_weak(seen, total);) {
  }
  return Pick{*best_dep, best};
}

void ReplicaDirectory::on_wake(std::function<void(const std::string&)> f) {
  std::lock_guard lk(mu_);
  wake_ = std::move(f);
}

void ReplicaDirectory::wake(const std::string& model, const std::string& org) const {
  std::vector<std::string> ids;
  std::function<void(const std::string&)> f;
  {
    std::lock_guard lk(mu_);
    f = wake_;
    for_each_usable(by_model_, model, org, [&](const Snapshot& d) { ids.push_back(d->id); });
  }
  if (f) {
    for (const auto& id : ids) f(id);
  }
}

uint64_t ReplicaDirectory::wait_ready(const std::string& model, const std::string& org, std::function<void()> f) {
  std::lock_guard lk(mu_);
  uint64_t id = next_waiter_++;
  waiters_[id] = {model, org, std::move(f)};
  return id;
}

void ReplicaDirectory::cancel_waiter(uint64_t id) {
  std::lock_guard lk(mu_);
  waiters_.erase(id);
}

std::map<std::string, int> ReplicaDirectory::outstanding_by_deployment() {
  std::lock_guard lk(mu_);
  std::map<std::string, int> out;
  for (const auto& [id, d] : deployments_) {
    int n = 0;
    for (const auto& r : d->replicas) n += r.outstanding->load();
    n = std::max(n, d->peak->exchange(0));
    for (const auto& [wid, w] : waiters_) n += usable(*d, w.model, w.org);
    out[id] = n;
  }
  return out;
}

}  // namespace aicloud::gateway
