#include "agent/executor.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "util/json_util.h"
#include "util/time.h"

namespace aicloud {
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Write-then-rename, so readers see the old content or the new, never half.
void write_atomic(const fs::path& p, const std::string& content) {
  fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << content;
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
}

json read_json(const fs::path& p) {
  std::string s = slurp(p);
  if (s.empty()) return json::object();
  json j = json::parse(s, nullptr, false);
  return j.is_object() ? j : json::object();
}

// Closes every descriptor from 3 up, so that a workload inherits none of the agent's
// (its connections to the server, other workloads' pipes). Async-signal-safe.
void close_from_3() {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3u, ~0u, 0u) == 0) return;
#endif
  long max = sysconf(_SC_OPEN_MAX);
  for (long fd = 3; fd < (max > 0 ? max : 1024); ++fd) close(int(fd));
}

json spec_to_json(const SandboxSpec& s) {
  return {{"id", s.id}, {"dir", s.dir}, {"argv", s.argv}, {"env", s.env}, {"gpus", s.gpus},
          {"memory_bytes", s.memory_bytes}, {"cpus", s.cpus}, {"run_as", s.run_as}, {"log_cap_bytes", s.log_cap_bytes},
          {"cwd", s.cwd}, {"cgroup", s.cgroup}, {"restart_always", s.restart_always}, {"timeout_ms", s.timeout_ms},
          {"nice", s.nice}};
}

SandboxSpec spec_from_json(const json& j) {
  SandboxSpec s;
  s.id = j.at("id");
  s.dir = j.at("dir");
  s.argv = j.at("argv").get<std::vector<std::string>>();
  s.env = j.at("env").get<std::map<std::string, std::string>>();
  s.gpus = j.at("gpus").get<std::vector<int>>();
  s.memory_bytes = j.value("memory_bytes", int64_t(0));
  s.cpus = j.value("cpus", 0.0);
  s.run_as = j.value("run_as", "");
  s.log_cap_bytes = j.value("log_cap_bytes", int64_t(8 << 20));
  s.cwd = j.value("cwd", "");
  s.cgroup = j.value("cgroup", "");
  s.restart_always = j.value("restart_always", false);
  s.timeout_ms = j.value("timeout_ms", int64_t(0));
  s.nice = j.value("nice", 0);
  return s;
}

bool group_alive(pid_t pgid) { return pgid > 0 && ::kill(-pgid, 0) == 0; }

// logs/base: the bytes rotated away before output.log.1, and the inode output.log.1 had when
// that was written (a reader that sees another inode caught a rotation half done).
struct LogBase {
  int64_t base = 0;
  uint64_t inode = 0;
  bool operator==(const LogBase&) const = default;
};

LogBase read_base(const fs::path& logs) {
  json j = read_json(logs / "base");
  return {j.value("base", int64_t(0)), j.value("inode", uint64_t(0))};
}

struct FileInfo {
  uint64_t inode = 0;
  int64_t size = 0;
};
FileInfo file_info(const fs::path& p) {
  struct stat st{};
  if (::stat(p.c_str(), &st) != 0) return {};
  return {uint64_t(st.st_ino), int64_t(st.st_size)};
}

// Up to len bytes of p from off.
std::string read_range(const fs::path& p, int64_t off, int64_t len) {
  if (len <= 0) return "";
  std::ifstream f(p, std::ios::binary);
  if (!f) return "";
  f.seekg(off);
  std::string out(size_t(len), '\0');
  f.read(out.data(), len);
  out.resize(size_t(f.gcount()));
  return out;
}

}  // namespace

Executor::Executor(std::string root, std::string self_exe) : root_(std::move(root)), self_(std::move(self_exe)) {
  fs::create_directories(root_);
  ::chmod(root_.c_str(), 0711);  // workloads run as another user: they traverse, never list
}

bool Executor::start(const SandboxSpec& in, std::string* error) {
  fs::path d = dir(in.id);
  if (fs::exists(d / "pgid")) return true;  // already started: assignments are idempotent by id
  SandboxSpec spec = in;
  spec.dir = d.string();
  // GPU visibility: only the assigned devices; none at all when no GPU was assigned.
  std::string devices;
  for (int g : spec.gpus) devices += (devices.empty() ? "" : ",") + std::to_string(g);
  spec.env["CUDA_VISIBLE_DEVICES"] = devices;
  spec.env["NVIDIA_VISIBLE_DEVICES"] = devices.empty() ? "void" : devices;
  std::error_code ec;
  fs::create_directories(d / "work", ec);
  fs::create_directories(d / "logs", ec);
  if (ec) {
    *error = "cannot create " + d.string() + ": " + ec.message();
    return false;
  }
  ::chmod(d.c_str(), 0711);
  ::chmod((d / "logs").c_str(), 0700);
  write_atomic(d / "spec.json", spec_to_json(spec).dump(2));
  std::string exe = self_, sub = "agent-exec", arg = d.string();
  pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + strerror(errno);
    return false;
  }
  if (pid == 0) {
    setsid();  // its own session and process group: stop() signals the whole tree
    int null = ::open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    close_from_3();
    char* argv[] = {exe.data(), sub.data(), arg.data(), nullptr};
    execv(exe.c_str(), argv);
    _exit(127);
  }
  // Wait (briefly) for the child's setsid(), so that the group exists before anyone signals it.
  for (int i = 0; i < 2000 && getsid(pid) != pid; ++i) usleep(100);
  write_atomic(d / "pgid", std::to_string(pid));  // setsid: pgid == pid
  return true;
}

void Executor::stop(const std::string& id, int64_t grace_ms) {
  ProcessState s = state(id);
  if (s.phase != ProcessState::kRunning) return;
  ::kill(-s.pgid, SIGTERM);
  if (!kill_deadline_ms_.count(id)) kill_deadline_ms_[id] = now_ms() + grace_ms;
}

void Executor::restart(const std::string& id, const std::string& why) {
  if (state(id).phase != ProcessState::kRunning) return;
  write_atomic(fs::path(dir(id)) / "restart.request", why);
}

ProcessState Executor::state(const std::string& id) const {
  ProcessState s;
  fs::path d = dir(id);
  std::string pg = slurp(d / "pgid");
  if (pg.empty()) return s;
  s.pgid = pid_t(std::atoi(pg.c_str()));
  json r = read_json(d / "restarts.json");
  s.restarts = r.value("restarts", 0);
  s.last_exit_code = r.value("last_exit_code", 0);
  std::string ex = slurp(d / "exit.json");
  if (!ex.empty()) {
    s.phase = ProcessState::kExited;
    json j = json::parse(ex, nullptr, false);
    s.exit_code = j.is_object() ? j.value("exit_code", -1) : -1;
    s.timed_out = j.is_object() && j.value("timed_out", false);
    return s;
  }
  if (group_alive(s.pgid)) {
    s.phase = ProcessState::kRunning;
    return s;
  }
  // The group is gone without an exit record: the supervisor was SIGKILLed (a stop past its
  // grace period, or the machine's OOM killer).
  s.phase = ProcessState::kExited;
  s.exit_code = 128 + SIGKILL;
  return s;
}

std::vector<std::string> Executor::known() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    if (e.is_directory() && fs::exists(e.path() / "pgid")) out.push_back(e.path().filename().string());
  }
  return out;
}

void Executor::forget(const std::string& id) {
  std::error_code ec;
  fs::remove_all(dir(id), ec);
  kill_deadline_ms_.erase(id);
}

void Executor::tick() {
  int st;
  while (waitpid(-1, &st, WNOHANG) > 0) {
  }
  int64_t now = now_ms();
  for (auto it = kill_deadline_ms_.begin(); it != kill_deadline_ms_.end();) {
    ProcessState s = state(it->first);
    if (s.phase != ProcessState::kRunning) {
      it = kill_deadline_ms_.erase(it);
    } else {
      if (now >= it->second) ::kill(-s.pgid, SIGKILL);
      ++it;
    }
  }
}

std::string Executor::read_log(const std::string& id, int64_t offset, int64_t max, int64_t* total,
                               int64_t* start) const {
  // The log is the rotated file followed by the current one, preceded by `base` bytes that were
  // rotated away. A rotation between our reads shows as a changed base or inode: read again.
  fs::path logs = fs::path(dir(id)) / "logs";
  std::string out;
  int64_t end = 0, begin = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    LogBase b = read_base(logs);
    FileInfo old = file_info(logs / "output.log.1");
    FileInfo cur = file_info(logs / "output.log");
    if (b.inode != old.inode) {  // renamed, base not written yet
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    end = b.base + old.size + cur.size;
    int64_t from = std::max(offset, b.base) - b.base;  // within old ++ cur
    begin = b.base + from;
    out.clear();
    if (from < old.size) out = read_range(logs / "output.log.1", from, std::min(max, old.size - from));
    int64_t room = max - int64_t(out.size());
    if (room > 0 && from + int64_t(out.size()) >= old.size) {
      int64_t in_cur = from + int64_t(out.size()) - old.size;
      out += read_range(logs / "output.log", in_cur, std::min(room, cur.size - in_cur));
    }
    if (read_base(logs) == b && file_info(logs / "output.log.1").inode == old.inode) break;
  }
  if (total) *total = end;
  if (start) *start = std::min(begin, end);
  return out;
}

// ---- the supervisor ----

namespace {

class RotatingLog {
 public:
  RotatingLog(fs::path path, int64_t cap) : path_(std::move(path)), cap_(std::max<int64_t>(cap, 4096)) {
    base_ = read_base(path_.parent_path());
    open();
  }
  ~RotatingLog() {
    if (fd_ >= 0) ::close(fd_);
  }
  // A file never grows past the cap, however large one read from the pipe was: the chunk is
  // split at the boundary, so what is kept is always at most two caps.
  void write(const char* p, size_t n) {
    while (n > 0) {
      if (size_ >= cap_) rotate();
      size_t room = size_t(cap_ - size_);
      size_t part = std::min(n, room);
      ssize_t w = ::write(fd_, p, part);
      if (w <= 0) return;  // a full disk drops output rather than stopping the workload
      size_ += w;
      p += w;
      n -= size_t(w);
    }
  }
  void write(const std::string& s) { write(s.data(), s.size()); }

 private:
  void rotate() {
    ::close(fd_);
    fs::path old = path_.string() + ".1";
    int64_t dropped = file_info(old).size;
    std::error_code ec;
    fs::rename(path_, old, ec);
    base_.base += dropped;
    base_.inode = file_info(old).inode;
    write_atomic(path_.parent_path() / "base", json{{"base", base_.base}, {"inode", base_.inode}}.dump());
    open();
  }
  void open() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    struct stat st{};
    size_ = fstat(fd_, &st) == 0 ? st.st_size : 0;
  }
  fs::path path_;
  int64_t cap_;
  int fd_ = -1;
  int64_t size_ = 0;
  LogBase base_;
};

volatile sig_atomic_t g_stopping = 0;  // the group got SIGTERM: the workload is being stopped
void on_term(int) { g_stopping = 1; }

// Signals every process in the supervisor's process group but the supervisor itself (a restart
// or a timeout ends the workload's processes, not their supervisor).
void signal_group_but_self(int sig) {
  pid_t self = getpid(), group = getpgrp();
  DIR* proc = opendir("/proc");
  if (!proc) return;
  while (dirent* e = readdir(proc)) {
    char* endp = nullptr;
    long pid = strtol(e->d_name, &endp, 10);
    if (!endp || *endp != '\0' || pid <= 0 || pid == self) continue;
    std::string stat = slurp(std::string("/proc/") + e->d_name + "/stat");
    auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    char state = 0;
    int ppid = 0, pgrp = 0;
    if (sscanf(stat.c_str() + close_paren + 1, " %c %d %d", &state, &ppid, &pgrp) == 3 && pgrp == group) {
      ::kill(pid_t(pid), sig);
    }
  }
  closedir(proc);
}

struct RunResult {
  int code = 0;
  bool timed_out = false;
  bool restart_requested = false;
};

// One run of the command, its output into log, until it and everything holding its output ended.
RunResult run_once(const SandboxSpec& spec, const fs::path& d, const std::vector<std::string>& cgroups,
                   RotatingLog& log, int64_t deadline_ms) {
  RunResult res;
  std::error_code ec;
  fs::remove(d / "restart.request", ec);  // asked for before this run began: nothing to end
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    res.code = 126;
    return res;
  }
  std::vector<std::string> args = spec.argv;
  if (args.size() == 1) args = {"/bin/sh", "-c", args[0]};
  std::vector<std::string> envs;
  for (const auto& [k, v] : spec.env) envs.push_back(k + "=" + v);
  std::string cwd = spec.cwd.empty() ? (d / "work").string() : spec.cwd;
  pid_t child = fork();
  if (child < 0) {
    close(fds[0]);
    close(fds[1]);
    log.write("aicloud: fork failed: " + std::string(strerror(errno)) + "\n");
    res.code = 126;
    return res;
  }
  if (child == 0) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close_from_3();
    if (chdir(cwd.c_str()) != 0) {
      dprintf(2, "aicloud: cannot enter %s: %s\n", cwd.c_str(), strerror(errno));
      _exit(126);
    }
    std::string err = sandbox_enter(spec, cgroups);
    if (!err.empty()) {
      dprintf(2, "aicloud: sandbox: %s\n", err.c_str());
      _exit(126);
    }
    std::vector<char*> a, e;
    for (auto& s : args) a.push_back(s.data());
    a.push_back(nullptr);
    for (auto& s : envs) e.push_back(s.data());
    e.push_back(nullptr);
    setenv("PATH", spec.env.at("PATH").c_str(), 1);  // execvpe looks the command up in our own PATH
    execvpe(a[0], a.data(), e.data());
    dprintf(2, "aicloud: cannot run %s: %s\n", a[0], strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  char buf[65536];
  int status = 0;
  bool exited = false, eof = false;
  int64_t drain_until = 0, kill_at = 0;
  while (true) {
    if (!eof) {
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, 200) > 0) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n > 0) log.write(buf, size_t(n));
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) eof = true;  // every writer closed
      }
    } else if (!exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    // The command's own end, and orphans of its tree reparented to this supervisor (their
    // subreaper), which would otherwise stay zombies until the workload ends.
    int st = 0;
    for (pid_t p; (p = waitpid(-1, &st, WNOHANG)) > 0;) {
      if (p != child || exited) continue;
      status = st;
      exited = true;
      drain_until = now_ms() + 1000;  // background children may still hold the pipe
    }
    if (exited && (eof || now_ms() > drain_until)) break;
    if (exited) continue;
    int64_t now = now_ms();
    if (fs::exists(d / "restart.request", ec)) {
      std::string why = slurp(d / "restart.request");
      fs::remove(d / "restart.request", ec);
      log.write("[aicloud] restarting: " + why + "\n");
      res.restart_requested = true;
      signal_group_but_self(SIGTERM);
      if (!kill_at) kill_at = now + 5000;
    }
    if (deadline_ms && now >= deadline_ms && !res.timed_out) {
      res.timed_out = true;
      log.write("[aicloud] timed out after " + std::to_string(spec.timeout_ms / 1000) + " s\n");
      signal_group_but_self(SIGTERM);
      if (!kill_at) kill_at = now + 2000;
    }
    if (kill_at && now >= kill_at) signal_group_but_self(SIGKILL);
  }
  close(fds[0]);
  res.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (res.timed_out) res.code = 124;
  return res;
}

}  // namespace

int agent_exec_command(int argc, char** argv) {
  if (argc != 2) return 2;
  fs::path d = argv[1];
  SandboxSpec spec;
  try {
    spec = spec_from_json(json::parse(slurp(d / "spec.json")));
  } catch (const std::exception& e) {
    write_atomic(d / "exit.json", json{{"exit_code", 127}, {"error", e.what()}}.dump());
    return 1;
  }
  // The supervisor outlives SIGTERM to the group so it can record how the workload ended; the
  // handler notes that the workload is being stopped (so it is not restarted).
  struct sigaction sa{};
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  // Orphans of the workload's tree are reparented here rather than to init: the supervisor reaps
  // them, and knows when the last one is gone.
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  // A sandbox's plain environment: a PATH, and HOME in the work dir (the workload's own, or for
  // an exec its instance's), which its user can write.
  if (!spec.env.count("PATH")) spec.env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  if (!spec.env.count("HOME")) spec.env["HOME"] = spec.cwd.empty() ? (d / "work").string() : spec.cwd;
  if (!spec.run_as.empty() && geteuid() == 0 && !spec.env.count("USER")) spec.env["USER"] = spec.run_as;
  auto cgroups = sandbox_cgroups(spec);
  if (!spec.run_as.empty() && geteuid() == 0 && spec.cwd.empty()) {
    // The workload's user owns its work dir (and nothing else of the agent's).
    if (passwd* pw = getpwnam(spec.run_as.c_str())) {
      if (chown((d / "work").c_str(), pw->pw_uid, pw->pw_gid) != 0) { /* best effort: runs, cannot write */ }
    }
  }
  RotatingLog log(d / "logs" / "output.log", spec.log_cap_bytes);
  int64_t deadline = spec.timeout_ms > 0 ? now_ms() + spec.timeout_ms : 0;
  int restarts = 0;
  int64_t backoff_ms = 1000;
  RunResult r;
  while (true) {
    int64_t started = now_ms();
    r = run_once(spec, d, cgroups, log, deadline);
    if (!spec.restart_always || g_stopping || r.timed_out) break;
    // Restart in place: what is left of that run (background children) goes first, then the
    // command runs again after a backoff (1 s, doubling to 30 s; back to 1 s after a minute up).
    signal_group_but_self(SIGKILL);
    if (now_ms() - started > 60'000) backoff_ms = 1000;
    ++restarts;
    write_atomic(d / "restarts.json", json{{"restarts", restarts}, {"last_exit_code", r.code},
                                           {"health", r.restart_requested}, {"at_ms", now_ms()}}.dump());
    log.write("[aicloud] " + std::string(r.restart_requested ? "ended for a restart" : "exited") + " with code " +
              std::to_string(r.code) + "; starting again in " + std::to_string(backoff_ms / 1000) + " s (restart " + std::to_string(restarts) + ")\n");
    for (int64_t until = now_ms() + backoff_ms; now_ms() < until && !g_stopping;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (g_stopping) break;
    backoff_ms = std::min<int64_t>(backoff_ms * 2, 30'000);
  }
  // The workload ends with its command: what the command left running (background children,
  // one that ignored SIGTERM) goes too, and is reaped, so that an exited workload has no process
  // left in its group, not even a zombie.
  signal_group_but_self(SIGKILL);
  for (int64_t until = now_ms() + 2000; now_ms() < until;) {
    pid_t p = waitpid(-1, nullptr, WNOHANG);
    if (p < 0) break;  // ECHILD: nothing of it is left
    if (p == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  write_atomic(d / "exit.json", json{{"exit_code", r.code}, {"timed_out", r.timed_out}, {"restarts", restarts},
                                     {"finished_at_ms", now_ms()}}.dump());
  sandbox_cleanup(cgroups);
  return 0;
}

}  // namespace aicloud
