#include "support/server_process.h"
#include "util/proc.h"


#include <csignal>

#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace aicloud::test {
namespace fs = std::filesystem;

std::string aicloud_binary() {
  if (const char* b = std::getenv("AICLOUD_BIN")) return b;
  return AICLOUD_TEST_BINARY;  // set by tests/CMakeLists.txt
}

std::string source_dir() {
  if (const char* d = std::getenv("AICLOUD_SOURCE_DIR")) return d;
  std::ifstream cache(fs::path(aicloud_binary()).parent_path() / "CMakeCache.txt");
  std::string line;
  const std::string key = "CMAKE_HOME_DIRECTORY:INTERNAL=";
  while (std::getline(cache, line)) {
    if (line.rfind(key, 0) == 0) return line.substr(key.size());
  }
  return "";
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("no free port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

namespace {

// SIGKILL to every process whose command line mentions dir (it runs from it or on its files).
void kill_processes_under(const std::string& dir) {
  if (dir.size() < 8) return;  // never a short path such as "/" or "/tmp"
  for (pid_t pid : processes_mentioning(dir + "/")) ::kill(pid, SIGKILL);
}

}  // namespace

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "aicloud-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}
TempDir::~TempDir() {
  // Workloads outlive their agent by design (a restarted agent re-adopts them): when a test is
  // over, end every process that still runs from here (supervisors, workloads, llama-server).
  kill_processes_under(path_);
  if (!std::getenv("AICLOUD_KEEP_TMP")) {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
}

ServerProcess::ServerProcess(std::vector<std::string> extra_args, std::map<std::string, std::string> env)
    : extra_args_(std::move(extra_args)), env_(std::move(env)) {
  start();
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
  }
}

static std::string read_file(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

static std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void ServerProcess::start() {
  fs::remove(fs::path(dir_.path()) / "server.url");
  std::vector<std::string> args = {aicloud_binary(), "server", "--listen", "127.0.0.1:0", "--data-dir", dir_.path(),
                                   "--log-level", "warn"};
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  std::string log_path = (fs::path(dir_.path()) / "server.log").string();
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    for (const auto& [k, v] : env_) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < deadline) {
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("aicloud server exited at start: " + log());
    }
    auto url = trim(read_file(fs::path(dir_.path()) / "server.url"));
    if (!url.empty()) {
      try {
        http::Client c(url, std::chrono::seconds(2));
        if (c.request("GET", "/healthz").status == 200) {
          url_ = url;
          admin_key_ = trim(read_file(fs::path(dir_.path()) / "admin.key"));
          return;
        }
      } catch (const std::exception&) {
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("aicloud server did not become healthy in 15 s: " + log());
}

int ServerProcess::stop_graceful() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int st = 0;
  waitpid(pid_, &st, 0);
  pid_ = -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void ServerProcess::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int st;
  waitpid(pid_, &st, 0);
  pid_ = -1;
}

void ServerProcess::signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

std::optional<int> ServerProcess::wait_exit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string ServerProcess::log() const { return read_file(fs::path(dir_.path()) / "server.log"); }

std::unique_ptr<http::Client> ServerProcess::client() const { return std::make_unique<http::Client>(url_); }

http::ClientResponse Api::call(const std::string& method, const std::string& path, const json& body,
                               std::vector<std::pair<std::string, std::string>> headers) {
  if (!key.empty()) headers.emplace_back("Authorization", "Bearer " + key);
  if (!org.empty()) headers.emplace_back("OpenAI-Organization", org);
  return c.request(method, path, body.is_null() ? "" : body.dump(), headers);
}

static json expect(const http::ClientResponse& r, unsigned want, const std::string& what) {
  if (r.status != want) {
    throw std::runtime_error(what + ": want HTTP " + std::to_string(want) + ", got " + std::to_string(r.status) +
                             ": " + r.body);
  }
  return r.body.empty() ? json() : json::parse(r.body);
}

json Api::get(const std::string& path, unsigned want) { return expect(call("GET", path), want, "GET " + path); }
json Api::post(const std::string& path, const json& body, unsigned want) {
  return expect(call("POST", path, body), want, "POST " + path);
}
json Api::del(const std::string& path, unsigned want) { return expect(call("DELETE", path), want, "DELETE " + path); }

Tenant make_tenant(http::Client& c, const std::string& operator_key, const std::string& name) {
  Tenant t;
  t.owner_email = name + "-owner@example.com";
  t.owner_password = "correct horse battery";
  Api op{c, operator_key, ""};
  json org = op.post("/admin/v1/organizations",
                     {{"name", name}, {"owner_email", t.owner_email}, {"owner_password", t.owner_password}}, 201);
  t.org_id = org["id"];
  op.org = t.org_id;
  t.admin_key = op.post("/v1/organization/admin_api_keys", {{"name", "test admin"}}, 201)["value"];
  Api admin{c, t.admin_key, ""};
  json proj = admin.post("/v1/organization/projects", {{"name", name + " project"}}, 201);
  t.project_id = proj["id"];
  t.project_key =
      admin.post("/v1/organization/projects/" + t.project_id + "/api_keys", {{"name", "test key"}}, 201)["value"];
  return t;
}

}  // namespace aicloud::test
