// The sandbox a workload runs in: its own session and process group, its own work dir, a
// non-root user where possible, CPU and memory limits through cgroups when writable (v2, else
// v1), else rlimits, and GPU visibility through CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace aicloud {

struct SandboxSpec {
  std::string id;                 // the assignment id; names the cgroup and the work dir
  std::string dir;                // the workload's own directory (work/, logs/, state files)
  std::vector<std::string> argv;  // the command; a single string runs under /bin/sh -c
  std::map<std::string, std::string> env;
  std::vector<int> gpus;          // device indices visible to it
  int64_t memory_bytes = 0;       // 0 = no limit
  double cpus = 0;                // 0 = no limit
  std::string run_as;             // user name; "" = the agent's own user
  int64_t log_cap_bytes = 8 << 20;  // per log file; one rotated file is kept
  std::string cwd;                // where the command starts; "" = DIR/work (an exec: its instance's)
  std::string cgroup;             // the cgroup's name; "" = id (an exec joins its instance's cgroup)
  bool restart_always = false;    // services: the supervisor runs the command again whenever it ends
  int64_t timeout_ms = 0;         // 0 = none; else SIGTERM at the deadline, SIGKILL 2 s later, exit 124
};

// How limits were applied, for the workload's status ("cgroup-v2", "cgroup-v1", "rlimit").
std::string sandbox_limit_mode();

// Creates the cgroup for spec (if cgroups are writable); returns the cgroup dirs to join.
std::vector<std::string> sandbox_cgroups(const SandboxSpec& spec);
// In the child, before exec: join cgroups, apply rlimits if no cgroup, drop privileges.
// Returns an error message, or "" on success.
std::string sandbox_enter(const SandboxSpec& spec, const std::vector<std::string>& cgroups);
// Removes the workload's cgroups after it exited.
void sandbox_cleanup(const std::vector<std::string>& cgroups);

}  // namespace aicloud
