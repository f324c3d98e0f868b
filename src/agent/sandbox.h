// The sandbox a workload runs in: its own session and process group, its own work dir, a
// non-root user where possible, CPU and memory limits through cgroups when writable (v2, else
// v1), else rlimits, a CPU priority below the platform's own (nice, and the cgroups' weight),
// and GPU visibility through CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES.
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
  // How many nice levels below the agent it runs (0-19; 0 = the agent's own CPU priority), and
  // with cgroups the weight of the cgroup all workloads share, lowered to match. Under contention
  // for the CPU the platform's own threads (the agent's heartbeats; on one machine the server's
  // API and gateway, whose proxied requests wait on a model's compute threads) are run first.
  int nice = 0;
};

// The CPU weight a cgroup gets for a nice level: the kernel's weight for that level scaled to
// cgroup v2's cpu.weight (100 at nice 0), or to v1's cpu.shares (1024) when `v1`; never under
// the least each takes (1, and 2).
int64_t cgroup_cpu_weight(int nice, bool v1);

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
