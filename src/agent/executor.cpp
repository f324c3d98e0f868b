#include "agent/executor.h"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

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
  fs::rename(tmp, p);
}

json spec_to_json(const SandboxSpec& s) {
  return {{"id", s.id}, {"dir", s.dir}, {"argv", s.argv}, {"env", s.env}, {"gpus", s.gpus},
          {"memory_bytes", s.memory_bytes}, {"cpus", s.cpus}, {"run_as", s.run_as}, {"log_cap_bytes", s.log_cap_bytes}};
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
  return s;
}

bool group_alive(pid_t pgid) { return pgid > 0 && ::kill(-pgid, 0) == 0; }

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

ProcessState Executor::state(const std::string& id) const {
  ProcessState s;
  fs::path d = dir(id);
  std::string pg = slurp(d / "pgid");
  if (pg.empty()) return s;
  s.pgid = pid_t(std::atoi(pg.c_str()));
  std::string ex = slurp(d / "exit.json");
  if (!ex.empty()) {
    s.phase = ProcessState::kExited;
    try {
      s.exit_code = json::parse(ex).value("exit_code", -1);
    } catch (...) {
      s.exit_code = -1;
    }
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

std::string Executor::read_log(const std::string& id, int64_t offset, int64_t max, int64_t* total) const {
  // The log is the rotated file followed by the current one; offsets count from the start of
  // what is still kept.
  fs::path logs = fs::path(dir(id)) / "logs";
  std::string all = slurp(logs / "output.log.1") + slurp(logs / "output.log");
  if (total) *total = int64_t(all.size());
  if (offset >= int64_t(all.size())) return "";
  return all.substr(size_t(std::max<int64_t>(0, offset)), size_t(max));
}

// ---- the supervisor ----

namespace {

class RotatingLog {
 public:
  RotatingLog(fs::path path, int64_t cap) : path_(std::move(path)), cap_(std::max<int64_t>(cap, 4096)) { open(); }
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

 private:
  void rotate() {
    ::close(fd_);
    std::error_code ec;
    fs::rename(path_, path_.string() + ".1", ec);
    open();
  }
  void open() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
    struct stat st{};
    size_ = fstat(fd_, &st) == 0 ? st.st_size : 0;
  }
  fs::path path_;
  int64_t cap_;
  int fd_ = -1;
  int64_t size_ = 0;
};

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
  // The supervisor outlives SIGTERM to the group so it can record how the workload ended.
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  auto cgroups = sandbox_cgroups(spec);
  if (!spec.run_as.empty() && geteuid() == 0) {
    // The workload's user owns its work dir (and nothing else of the agent's).
    if (passwd* pw = getpwnam(spec.run_as.c_str())) {
      if (chown((d / "work").c_str(), pw->pw_uid, pw->pw_gid) != 0) { /* best effort: runs, cannot write */ }
    }
  }
  int fds[2];
  if (pipe(fds) != 0) return 1;
  std::vector<std::string> args = spec.argv;
  if (args.size() == 1) args = {"/bin/sh", "-c", args[0]};
  std::vector<std::string> envs;
  for (const auto& [k, v] : spec.env) envs.push_back(k + "=" + v);
  pid_t child = fork();
  if (child == 0) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    if (chdir((d / "work").c_str()) != 0) _exit(126);
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
    execvpe(a[0], a.data(), e.data());
    dprintf(2, "aicloud: cannot run %s: %s\n", a[0], strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  RotatingLog log(d / "logs" / "output.log", spec.log_cap_bytes);
  char buf[65536];
  int status = 0;
  bool exited = false;
  int64_t drain_until = 0;
  while (true) {
    pollfd p{fds[0], POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r > 0) {
      ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;  // every writer closed: the workload and its children are done
      log.write(buf, size_t(n));
    }
    if (!exited && waitpid(child, &status, WNOHANG) == child) {
      exited = true;
      drain_until = now_ms() + 1000;  // background children may still hold the pipe
    }
    if (exited && now_ms() > drain_until) break;
  }
  if (!exited) waitpid(child, &status, 0);
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  write_atomic(d / "exit.json", json{{"exit_code", code}, {"finished_at_ms", now_ms()}}.dump());
  sandbox_cleanup(cgroups);
  return 0;
}

}  // namespace aicloud
