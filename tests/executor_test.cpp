// The agent's process executor with real processes: exit codes, logs with rotation (and offsets
// that go on across rotations), stopping a whole process tree (SIGTERM, then SIGKILL after the
// grace period), GPU visibility, re-adoption of running workloads by a new Executor (an agent
// restart), restarts in place (services), restart requests, timeouts and another work dir (execs).
#include "agent/executor.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <thread>

#include "support/server_process.h"
#include "util/proc.h"
#include "util/time.h"

using namespace aicloud;
using namespace aicloud::test;

namespace {

ProcessState wait_done(Executor& ex, const std::string& id, int ms = 10000) {
  ProcessState s;
  for (int t = 0; t < ms; t += 20) {
    ex.tick();
    s = ex.state(id);
    if (s.phase == ProcessState::kExited) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return s;
}

SandboxSpec spec(const std::string& id, std::vector<std::string> argv) {
  SandboxSpec s;
  s.id = id;
  s.argv = std::move(argv);
  return s;
}

// Whether the process group `pgid` is gone within `ms`: the workload's processes have ended and
// been reaped, and so has its supervisor, which leaves a moment after recording the exit (later
// under a sanitizer, whose leak check runs at its exit).
bool group_gone(Executor& ex, pid_t pgid, int ms = 5000) {
  for (int t = 0; t < ms; t += 20) {
    ex.tick();  // reaps the supervisor
    if (::kill(-pgid, 0) != 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::string log_of(Executor& ex, const std::string& id) {
  int64_t total = 0;
  return ex.read_log(id, 0, 1 << 20, &total);
}

TEST(Executor, RunsToCompletionWithExitCodeAndLogs) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("asg_1", {"echo hello from $AICLOUD_RANK; echo oops >&2; exit 3"});
  s.env["AICLOUD_RANK"] = "7";
  ASSERT_TRUE(ex.start(s, &err)) << err;
  ProcessState st = wait_done(ex, "asg_1");
  ASSERT_EQ(st.phase, ProcessState::kExited);
  EXPECT_EQ(st.exit_code, 3);
  std::string log = log_of(ex, "asg_1");
  EXPECT_NE(log.find("hello from 7"), std::string::npos) << log;
  EXPECT_NE(log.find("oops"), std::string::npos) << log;
  // Starting the same id again is a no-op: nothing runs twice.
  ASSERT_TRUE(ex.start(s, &err));
  EXPECT_EQ(ex.state("asg_1").exit_code, 3);
  EXPECT_EQ(ex.known().size(), 1u);
}

// A workload runs `nice` levels below the executor's process (the agent), capped at 19; 0 leaves
// it at the agent's own priority. The cgroup weights that match are the kernel's for each level.
TEST(Executor, RunsWorkloadsAtALowerCpuPriority) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  const int own = getpriority(PRIO_PROCESS, 0);
  std::string err;
  for (int n : {0, 5, 19}) {
    const std::string id = "asg_nice" + std::to_string(n);
    auto s = spec(id, {"echo nice=$(nice)"});
    s.nice = n;
    ASSERT_TRUE(ex.start(s, &err)) << err;
    ASSERT_EQ(wait_done(ex, id).exit_code, 0) << log_of(ex, id);
    EXPECT_EQ(log_of(ex, id), "nice=" + std::to_string(std::min(19, own + n)) + "\n");
  }
  EXPECT_EQ(cgroup_cpu_weight(0, false), 100);
  EXPECT_EQ(cgroup_cpu_weight(0, true), 1024);
  EXPECT_EQ(cgroup_cpu_weight(10, false), 11);  // the kernel's weight for nice 10 is 110 of 1024
  EXPECT_EQ(cgroup_cpu_weight(10, true), 110);
  EXPECT_EQ(cgroup_cpu_weight(19, false), 1);
  EXPECT_EQ(cgroup_cpu_weight(19, true), 15);
}

TEST(Executor, CommandNotFoundIs127) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  ASSERT_TRUE(ex.start(spec("asg_nf", {"/no/such/program", "x"}), &err));
  ProcessState st = wait_done(ex, "asg_nf");
  EXPECT_EQ(st.exit_code, 127);
  EXPECT_NE(log_of(ex, "asg_nf").find("cannot run /no/such/program"), std::string::npos);
}

TEST(Executor, GpuVisibility) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("asg_gpu", {"echo cuda=[$CUDA_VISIBLE_DEVICES] nv=[$NVIDIA_VISIBLE_DEVICES]"});
  s.gpus = {2, 3};
  ASSERT_TRUE(ex.start(s, &err));
  wait_done(ex, "asg_gpu");
  EXPECT_NE(log_of(ex, "asg_gpu").find("cuda=[2,3] nv=[2,3]"), std::string::npos) << log_of(ex, "asg_gpu");
  ASSERT_TRUE(ex.start(spec("asg_cpu", {"echo cuda=[$CUDA_VISIBLE_DEVICES] nv=[$NVIDIA_VISIBLE_DEVICES]"}), &err));
  wait_done(ex, "asg_cpu");
  EXPECT_NE(log_of(ex, "asg_cpu").find("cuda=[] nv=[void]"), std::string::npos);
}

TEST(Executor, StopKillsTheWholeTreeAndEscalates) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  // A tree: the shell, a background sleep, and a foreground sleep; TERM ends it gracefully.
  ASSERT_TRUE(ex.start(spec("asg_tree", {"trap 'echo got TERM; exit 0' TERM; echo ready; sleep 300 & sleep 300 & wait"}), &err));
  // One that ignores SIGTERM must be SIGKILLed after the grace period.
  ASSERT_TRUE(ex.start(spec("asg_stubborn", {"trap '' TERM; echo ready; sleep 300 & wait"}), &err));
  // Stopped only once both have set their traps (a slow start, under a sanitizer, takes longer
  // than any fixed pause).
  for (const char* id : {"asg_tree", "asg_stubborn"}) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (log_of(ex, id).find("ready") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_NE(log_of(ex, id).find("ready"), std::string::npos) << id << " did not start";
  }
  ASSERT_EQ(ex.state("asg_tree").phase, ProcessState::kRunning);
  pid_t tree = ex.state("asg_tree").pgid;
  int64_t t0 = now_ms();
  ex.stop("asg_tree", 5000);
  ex.stop("asg_stubborn", 500);
  ProcessState a = wait_done(ex, "asg_tree");
  ProcessState b = wait_done(ex, "asg_stubborn");
  EXPECT_EQ(a.phase, ProcessState::kExited);
  EXPECT_EQ(b.phase, ProcessState::kExited);
  EXPECT_EQ(b.exit_code, 128 + SIGKILL);
  EXPECT_GE(now_ms() - t0, 500);
  EXPECT_TRUE(group_gone(ex, tree)) << "a process of the stopped tree survived";
  EXPECT_NE(log_of(ex, "asg_tree").find("got TERM"), std::string::npos);
}

// A workload ends with its command: what the command left running in the background (here one
// that ignores SIGTERM and keeps the log pipe open) is ended and reaped with it, so that an
// exited workload leaves no process behind, not even a zombie.
TEST(Executor, WhatTheCommandLeftRunningEndsWithIt) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  ASSERT_TRUE(ex.start(spec("asg_left", {"(trap '' TERM; sleep 300) & echo started; exit 0"}), &err));
  ProcessState s = wait_done(ex, "asg_left");
  EXPECT_EQ(s.phase, ProcessState::kExited);
  EXPECT_EQ(s.exit_code, 0);
  EXPECT_NE(log_of(ex, "asg_left").find("started"), std::string::npos);
  EXPECT_TRUE(group_gone(ex, s.pgid)) << "a process of the exited workload survived";
}

TEST(Executor, ANewExecutorReadoptsRunningWorkloads) {
  TempDir d;
  std::string err;
  {
    Executor ex(d.path(), aicloud_binary());
    ASSERT_TRUE(ex.start(spec("asg_long", {"sleep 300"}), &err));
    ASSERT_TRUE(ex.start(spec("asg_short", {"exit 4"}), &err));
    wait_done(ex, "asg_short");
  }  // the "agent" goes away; its workloads do not
  Executor again(d.path(), aicloud_binary());
  auto ids = again.known();
  EXPECT_EQ(ids.size(), 2u);
  EXPECT_EQ(again.state("asg_long").phase, ProcessState::kRunning);
  EXPECT_EQ(again.state("asg_short").exit_code, 4);
  again.stop("asg_long", 1000);
  EXPECT_EQ(wait_done(again, "asg_long").phase, ProcessState::kExited);
  again.forget("asg_long");
  EXPECT_EQ(again.known().size(), 1u);
}

TEST(Executor, LogsRotateAtTheirCap) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("asg_log", {"for i in $(seq 1 2000); do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; done"});
  s.log_cap_bytes = 16 * 1024;
  ASSERT_TRUE(ex.start(s, &err));
  wait_done(ex, "asg_log");
  int64_t total = 0;
  std::string log = ex.read_log("asg_log", 0, 1 << 20, &total);
  EXPECT_LE(total, 2 * 16 * 1024 + 65536);
  EXPECT_NE(log.find("line-2000-"), std::string::npos);  // the tail is kept
  EXPECT_EQ(log.find("line-1-x"), std::string::npos);    // the head rotated away
}

TEST(Executor, RestartAlwaysRunsTheCommandAgainAndCounts) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("asg_svc", {"echo run; exit 3"});
  s.restart_always = true;
  ASSERT_TRUE(ex.start(s, &err)) << err;
  ProcessState st;
  for (int i = 0; i < 200; ++i) {
    ex.tick();
    st = ex.state("asg_svc");
    if (st.restarts >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(st.phase, ProcessState::kRunning);  // the supervisor lives on between runs
  EXPECT_EQ(st.restarts, 1);
  EXPECT_EQ(st.last_exit_code, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));  // the second run, after a 1 s backoff
  std::string log = log_of(ex, "asg_svc");
  size_t runs = 0;
  for (size_t at = log.find("run\n"); at != std::string::npos; at = log.find("run\n", at + 1)) ++runs;
  EXPECT_GE(runs, 2u) << log;
  EXPECT_NE(log.find("[aicloud] exited with code 3; starting again in 1 s (restart 1)"), std::string::npos) << log;
  ex.stop("asg_svc", 2000);  // a stop is not restarted
  ProcessState done = wait_done(ex, "asg_svc");
  EXPECT_EQ(done.phase, ProcessState::kExited);
  EXPECT_LE(done.restarts, 2);
}

TEST(Executor, ARestartRequestEndsTheRunAndStartsItAgain) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("asg_r", {"echo run; sleep 300 & wait"});
  s.restart_always = true;
  ASSERT_TRUE(ex.start(s, &err)) << err;
  // The restart request goes to a run that has begun (not to a supervisor still starting).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (log_of(ex, "asg_r").find("run\n") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_NE(log_of(ex, "asg_r").find("run\n"), std::string::npos) << "the run did not start";
  ex.restart("asg_r", "the health check failed");
  ProcessState st;
  for (int i = 0; i < 200 && st.restarts < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    st = ex.state("asg_r");
  }
  EXPECT_EQ(st.restarts, 1);
  EXPECT_EQ(st.last_exit_code, 128 + SIGTERM);
  EXPECT_EQ(st.phase, ProcessState::kRunning);
  EXPECT_NE(log_of(ex, "asg_r").find("[aicloud] restarting: the health check failed"), std::string::npos);
  ex.stop("asg_r", 1000);
  EXPECT_EQ(wait_done(ex, "asg_r").phase, ProcessState::kExited);
}

TEST(Executor, ATimeoutEndsItWith124) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("exec_t", {"trap '' TERM; sleep 30"});  // ignores SIGTERM: SIGKILL follows
  s.timeout_ms = 300;
  int64_t t0 = now_ms();
  ASSERT_TRUE(ex.start(s, &err)) << err;
  ProcessState st = wait_done(ex, "exec_t");
  EXPECT_EQ(st.phase, ProcessState::kExited);
  EXPECT_EQ(st.exit_code, 124);
  EXPECT_TRUE(st.timed_out);
  EXPECT_LT(now_ms() - t0, 8000);
  EXPECT_NE(log_of(ex, "exec_t").find("[aicloud] timed out"), std::string::npos);
}

TEST(Executor, RunsInAnotherWorkDirWhenAsked) {
  TempDir d, other;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("exec_cwd", {"pwd; echo home=$HOME"});
  s.cwd = other.path();
  ASSERT_TRUE(ex.start(s, &err)) << err;
  wait_done(ex, "exec_cwd");
  std::string log = log_of(ex, "exec_cwd");
  EXPECT_NE(log.find(other.path() + "\n"), std::string::npos) << log;
  EXPECT_NE(log.find("home=" + other.path() + "\n"), std::string::npos) << log;
}

// Offsets count every byte the workload wrote: a reader that follows by offset keeps going
// across rotations and gets every byte once, in order.
TEST(Executor, LogOffsetsGoOnAcrossRotations) {
  TempDir d;
  Executor ex(d.path(), aicloud_binary());
  std::string err;
  auto s = spec("asg_rot", {"for i in $(seq 1 1000); do printf 'line-%05d\\n' $i; "
                            "[ $((i % 20)) = 0 ] && sleep 0.02; done; true"});
  s.log_cap_bytes = 4096;
  ASSERT_TRUE(ex.start(s, &err)) << err;
  std::string followed;
  int64_t offset = 0;
  bool gap = false;
  for (int i = 0; i < 20000; ++i) {
    ex.tick();
    bool exited = ex.state("asg_rot").phase == ProcessState::kExited;
    int64_t total = 0, start = 0;
    std::string chunk = ex.read_log("asg_rot", offset, 1 << 20, &total, &start);
    if (start != offset) gap = true;  // fell more than a file behind (a loaded machine)
    followed += chunk;
    offset = start + int64_t(chunk.size());
    if (exited && offset == total) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(offset, 11000);
  if (!gap) {
    std::string want;
    for (int i = 1; i <= 1000; ++i) {
      char line[16];
      snprintf(line, sizeof line, "line-%05d\n", i);
      want += line;
    }
    EXPECT_EQ(followed, want);
  }
  // What is kept now: the rotated file (bytes 4096..8192) and the current one (8192..11000).
  int64_t total = 0, start = 0;
  std::string kept = ex.read_log("asg_rot", 0, 1 << 20, &total, &start);
  EXPECT_EQ(start, 4096);
  EXPECT_EQ(total, 11000);
  EXPECT_EQ(kept.size(), 11000u - 4096u);
  EXPECT_EQ(ex.read_log("asg_rot", 11000 - 11, 11, &total), "line-01000\n");
}

}  // namespace

// Walking /proc while processes come and go: a process that exits between the listing and the
// read of its command line is skipped, not an exception (an ifstream read of a gone process's
// cmdline threw from inside istreambuf_iterator and aborted test processes).
TEST(Proc, CommandLinesAreReadWhileProcessesComeAndGo) {
  std::string self = process_cmdline(getpid());
  EXPECT_NE(self.find("executor_test"), std::string::npos);
  const std::string marker = "aicloud-proc-test-" + std::to_string(getpid());
  std::atomic<bool> stop{false};
  std::atomic<int> spawned{0};
  auto churn_loop = [&] {
    while (!stop) {
      pid_t pid = fork();
      if (pid == 0) {
        execl("/bin/sh", "sh", "-c", "exit 0", marker.c_str(), static_cast<char*>(nullptr));
        _exit(127);
      }
      if (pid > 0) {
        waitpid(pid, nullptr, 0);
        ++spawned;
      }
    }
  };
  // (The old reader threw within about 1,400 walks of this churn, 5 s here.)
  std::thread churn1(churn_loop), churn2(churn_loop);
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  int walks = 0;
  while (std::chrono::steady_clock::now() < end) {
    EXPECT_NO_THROW(processes_mentioning(marker));
    ++walks;
  }
  stop = true;
  churn1.join();
  churn2.join();
  EXPECT_GT(spawned.load(), 10);
  EXPECT_GT(walks, 1);
  EXPECT_TRUE(processes_mentioning(marker).empty());  // all reaped
  pid_t gone = fork();
  if (gone == 0) _exit(0);
  waitpid(gone, nullptr, 0);
  EXPECT_EQ(process_cmdline(gone), "");
}
