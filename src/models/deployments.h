// Managed model deployments: a model, engine arguments and a replica policy, kept running as
// service workloads (one engine process each) that the scheduler places and agents run.
//
// The deployment is spec + status (kind "deployment"). The controller reconciles, level-
// triggered, every round:
//   - desired replicas = clamp(ceil(in-flight requests / target per replica), min, max); to zero
//     after an idle period when min_replicas is 0; at least one when a request woke it;
//   - replicas of an older spec generation are replaced one at a time (a new one first, the old
//     one stopped once the new one is ready);
//   - failed replicas are replaced (they no longer count);
//   - the gateway's ReplicaDirectory gets the ready replicas (endpoint + engine key), and the
//     operator's external endpoints (gateway/endpoints.h) as deployments of one replica each.
// A replica's command names the engine and the model by placeholder ({engine:llama-server},
// {model:ID:SHA256}, {port}); the agent resolves them on its node (engine build, model cache).
#pragma once
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "gateway/replicas.h"
#include "store/store.h"
#include "util/json_util.h"

namespace aicloud {

class App;

json deployment_json(const Object& d);

struct DeploymentControllerOptions {
  int round_ms = 500;
};

class DeploymentController {
 public:
  DeploymentController(Store& store, gateway::ReplicaDirectory& dir, DeploymentControllerOptions opts = {});
  ~DeploymentController();
  void start();
  void stop();
  void round();  // one reconciliation pass (public for tests)

 private:
  Store& store_;
  gateway::ReplicaDirectory& dir_;
  DeploymentControllerOptions opts_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
  std::set<std::string> woken_;              // deployments a request asked to wake
  std::map<std::string, int64_t> last_busy_; // deployment -> last time (ms) it had requests in flight
  std::set<std::string> published_endpoints_; // external endpoints in the directory (gateway/endpoints.h)
};

void add_deployment_routes(App& app);

}  // namespace aicloud
