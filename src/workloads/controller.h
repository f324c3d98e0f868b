// The scheduling controller: the loop that turns pending workloads into assignments.
//
// Each round (level-triggered, every few hundred milliseconds):
//   1. assignments on nodes whose lease expired become lost (their workloads retry or fail);
//   2. held placements whose preempted victims have exited are released to run;
//   3. the scheduler library (src/scheduler) gets the fleet, what runs, and the pending queue,
//      and returns a plan;
//   4. the plan is written in one transaction: placements become assignments, victims are
//      marked preempting and get SIGTERM with the notice period, pending workloads get a reason.
// The Cluster is rebuilt from the store each round. That is O(fleet) and fine for the fleets this
// server runs today; the library's Cluster supports incremental updates for 10,000-node fleets.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "capacity/leases.h"
#include "store/store.h"

namespace aicloud {

struct ControllerOptions {
  int64_t round_ms = 200;
  int64_t preemption_notice_ms = 30'000;  // SIGTERM, then SIGKILL after this
};

class SchedulerController {
 public:
  SchedulerController(Store& store, NodeLeases& leases, ControllerOptions opts = {});
  ~SchedulerController();

  void start();  // runs rounds on its own thread
  void stop();
  void round();  // one round (tests call it directly)

 private:
  Store& store_;
  NodeLeases& leases_;
  ControllerOptions opts_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
};

}  // namespace aicloud
