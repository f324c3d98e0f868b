// Runs workload processes for the agent. Each runs under a small supervisor
// (`aicloud agent-exec`, a separate process in the workload's own session and process group)
// that applies the sandbox, keeps the logs with a size cap and rotation, and writes the exit
// status to a file. Because everything the agent needs is in the workload's directory, an
// agent that restarts re-adopts the workloads still running, and learns how finished ones
// ended: nothing is orphaned and nothing starts twice.
//
// Layout: ROOT/<id>/{spec.json, pgid, exit.json, work/, logs/output.log[.1]}
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/sandbox.h"

namespace aicloud {

struct ProcessState {
  enum Phase { kUnknown, kRunning, kExited, kLost } phase = kUnknown;
  int exit_code = 0;      // kExited: the command's exit code, or 128+signal
  pid_t pgid = 0;
};

class Executor {
 public:
  // self_exe: this binary (to run `agent-exec`); root: where workload dirs live.
  Executor(std::string root, std::string self_exe);

  // Starts spec unless a workload with this id already exists (idempotent by id).
  // Returns false with *error set when it could not start.
  bool start(const SandboxSpec& spec, std::string* error);
  // SIGTERM to the whole process group now, SIGKILL after grace_ms (see tick()).
  void stop(const std::string& id, int64_t grace_ms);
  ProcessState state(const std::string& id) const;
  // Workload ids with a directory under root (running or finished), for re-adoption.
  std::vector<std::string> known() const;
  // Removes a finished workload's directory.
  void forget(const std::string& id);
  // Reaps exited supervisors and escalates overdue stops to SIGKILL. Call often.
  void tick();
  // Up to max bytes of the workload's log from offset (across the rotated file and the current one).
  std::string read_log(const std::string& id, int64_t offset, int64_t max, int64_t* total) const;

 private:
  std::string dir(const std::string& id) const { return root_ + "/" + id; }
  std::string root_, self_;
  std::map<std::string, int64_t> kill_deadline_ms_;  // id -> when to SIGKILL
};

// `aicloud agent-exec DIR`: the supervisor (reads DIR/spec.json). Returns its exit code.
int agent_exec_command(int argc, char** argv);

}  // namespace aicloud
