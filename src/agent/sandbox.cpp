#include "agent/sandbox.h"

#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace aicloud {
namespace fs = std::filesystem;

namespace {

bool write_file(const fs::path& p, const std::string& v) {
  std::ofstream f(p);
  f << v;
  f.flush();
  return bool(f);
}

bool cgroup_v2() { return fs::exists("/sys/fs/cgroup/cgroup.controllers"); }

// A writable cgroup directory we may create children in, for a v1 controller or v2.
fs::path cgroup_root(const std::string& controller) {
  fs::path base = controller.empty() ? fs::path("/sys/fs/cgroup") : fs::path("/sys/fs/cgroup") / controller;
  std::error_code ec;
  fs::path root = base / "aicloud";
  fs::create_directories(root, ec);
  if (ec || access(root.c_str(), W_OK) != 0) return {};
  return root;
}

}  // namespace

int64_t cgroup_cpu_weight(int nice, bool v1) {
  // The kernel's weights fall by a factor of ~1.25 per nice level (sched_prio_to_weight).
  const double w = 1024.0 / std::pow(1.25, nice);
  return std::max<int64_t>(v1 ? 2 : 1, std::llround(v1 ? w : w * 100.0 / 1024.0));
}

std::string sandbox_limit_mode() {
  if (cgroup_v2()) return cgroup_root("").empty() ? "rlimit" : "cgroup-v2";
  return cgroup_root("memory").empty() ? "rlimit" : "cgroup-v1";
}

std::vector<std::string> sandbox_cgroups(const SandboxSpec& spec) {
  std::vector<std::string> out;
  if (spec.memory_bytes <= 0 && spec.cpus <= 0) return out;
  const std::string& name = spec.cgroup.empty() ? spec.id : spec.cgroup;
  std::error_code ec;
  if (cgroup_v2()) {
    fs::path root = cgroup_root("");
    if (root.empty()) return out;
    write_file(root / "cgroup.subtree_control", "+memory +cpu");
    // Within its own cgroup a process's nice weighs only against its siblings: against the
    // platform's processes it is the shared cgroup's weight that counts. (Written at 0 too: an
    // agent started again with --workload-nice 0 gives the cgroup its default weight back.)
    write_file(root / "cpu.weight", std::to_string(cgroup_cpu_weight(spec.nice, false)));
    fs::path g = root / name;
    fs::create_directories(g, ec);
    if (ec) return out;
    if (spec.memory_bytes > 0) write_file(g / "memory.max", std::to_string(spec.memory_bytes));
    if (spec.cpus > 0) write_file(g / "cpu.max", std::to_string(int64_t(spec.cpus * 100000)) + " 100000");
    out.push_back(g.string());
    return out;
  }
  if (spec.memory_bytes > 0) {
    fs::path root = cgroup_root("memory");
    if (!root.empty()) {
      fs::path g = root / name;
      fs::create_directories(g, ec);
      if (!ec && write_file(g / "memory.limit_in_bytes", std::to_string(spec.memory_bytes))) out.push_back(g.string());
    }
  }
  if (spec.cpus > 0) {
    fs::path root = cgroup_root("cpu");
    if (!root.empty()) {
      write_file(root / "cpu.shares", std::to_string(cgroup_cpu_weight(spec.nice, true)));  // (as cpu.weight above)
      fs::path g = root / name;
      fs::create_directories(g, ec);
      if (!ec && write_file(g / "cpu.cfs_period_us", "100000") &&
          write_file(g / "cpu.cfs_quota_us", std::to_string(int64_t(spec.cpus * 100000)))) {
        out.push_back(g.string());
      }
    }
  }
  return out;
}

std::string sandbox_enter(const SandboxSpec& spec, const std::vector<std::string>& cgroups) {
  std::string pid = std::to_string(getpid());
  for (const auto& g : cgroups) {
    if (!write_file(fs::path(g) / "cgroup.procs", pid)) return "cannot join cgroup " + g;
  }
  if (cgroups.empty() && spec.memory_bytes > 0) {
    // Without cgroups: cap the data segment (RLIMIT_AS would also count reserved GPU mappings).
    rlimit rl{rlim_t(spec.memory_bytes), rlim_t(spec.memory_bytes)};
    setrlimit(RLIMIT_DATA, &rl);
  }
  if (spec.nice > 0) {
    errno = 0;
    if (::nice(spec.nice) == -1 && errno != 0) return std::string("cannot lower its CPU priority: ") + std::strerror(errno);
  }
  if (!spec.run_as.empty() && geteuid() == 0) {
    passwd* pw = getpwnam(spec.run_as.c_str());
    if (!pw) return "no such user: " + spec.run_as;
    if (setgroups(0, nullptr) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
      return "cannot switch to user " + spec.run_as;
    }
    setenv("HOME", spec.dir.c_str(), 1);
    setenv("USER", spec.run_as.c_str(), 1);
  }
  return "";
}

void sandbox_cleanup(const std::vector<std::string>& cgroups) {
  // A cgroup shared with a workload that still runs (an exec's) is busy: rmdir leaves it.
  for (const auto& g : cgroups) rmdir(g.c_str());
}

}  // namespace aicloud
