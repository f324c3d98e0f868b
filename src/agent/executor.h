// Runs workload processes for the agent. Each runs under a small supervisor
// (`aicloud agent-exec`, a separate process in the workload's own session and process group)
// that applies the sandbox, keeps the logs with a size cap and rotation, restarts the command
// when the spec says so (services), enforces a timeout (execs), and writes the exit status to a
// file. Because everything the agent needs is in the workload's directory, an agent that
// restarts re-adopts the workloads still running, and learns how finished ones ended: nothing
// is orphaned and nothing starts twice.
//
// Layout: ROOT/<id>/{spec.json, pgid, exit.json, restarts.json, restart.request, work/,
//                    logs/output.log[.1], logs/base}
// Log offsets are absolute (bytes the workload ever wrote): logs/base counts the bytes rotated
// away, so a reader that ships logs by offset keeps going across any number of rotations.
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
  int exit_code = 0;      // kExited: the command's exit code, or 128+signal (124: timed out)
  pid_t pgid = 0;
  int restarts = 0;       // times the supervisor started the command again (restart_always)
  int last_exit_code = 0; // how the run before the last restart ended
  bool timed_out = false; // kExited: killed at its timeout
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
  // Asks the supervisor to end the current run of the command (SIGTERM, SIGKILL after 5 s) and
  // start it again (restart_always workloads; others just end). `why` goes into the log.
  void restart(const std::string& id, const std::string& why);
  ProcessState state(const std::string& id) const;
  // Workload ids with a directory under root (running or finished), for re-adoption.
  std::vector<std::string> known() const;
  // Removes a finished workload's directory.
  void forget(const std::string& id);
  // Reaps exited supervisors and escalates overdue stops to SIGKILL. Call often.
  void tick();
  // Up to max bytes of the workload's log from the absolute offset; bytes rotated away are
  // skipped, so *start (where the answer begins) may be past offset. *total is the absolute end.
  std::string read_log(const std::string& id, int64_t offset, int64_t max, int64_t* total,
                       int64_t* start = nullptr) const;
  // The workload's own directory (its work dir is dir(id) + "/work").
  std::string dir(const std::string& id) const { return root_ + "/" + id; }

 private:
  std::string root_, self_;
  std::map<std::string, int64_t> kill_deadline_ms_;  // id -> when to SIGKILL
};

// `aicloud agent-exec DIR`: the supervisor (reads DIR/spec.json). Returns its exit code.
int agent_exec_command(int argc, char** argv);

}  // namespace aicloud
