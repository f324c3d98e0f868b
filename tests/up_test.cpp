// `aicloud up`, the embedded default, as a user runs it: a child process on a fresh data dir and
// a free port; its "ready" line; the curl command it printed, pasted into a shell, returns a chat
// completion; SIGTERM stops everything it started (server, agent, the model's llama-server); a
// second start on the same data dir reuses the project key.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "support/server_process.h"
#include "util/proc.h"

using namespace aicloud;
using namespace aicloud::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct UpProcess {
  pid_t pid = -1;
  std::string out;

  UpProcess(const std::string& data_dir, int port) {
    out = fs::path(data_dir).parent_path() / ("up-" + std::to_string(port) + ".out");
    std::vector<std::string> args = {aicloud_binary(), "up", "--data-dir", data_dir,
                                     "--listen", "127.0.0.1:" + std::to_string(port), "--ready-timeout", "50"};
    pid = fork();
    if (pid == 0) {
      int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> a;
      for (auto& s : args) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
  }
  ~UpProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      int st;
      waitpid(pid, &st, 0);
    }
  }
  std::string output() const { return slurp(out); }
  // Waits for the ready line; false if up exited or the time ran out.
  bool wait_ready(std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (output().find("aicloud is ready") != std::string::npos && output().find("Stop it with Ctrl-C") != std::string::npos) {
        return true;
      }
      int st;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return false;
      }
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }
  int terminate(std::chrono::seconds limit) {
    ::kill(pid, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int st;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(50ms);
    }
    return -1;
  }
  // The printed curl command: from the line that starts with "curl " to the first line that
  // does not end with a backslash.
  std::string curl_command() const {
    std::istringstream in(output());
    std::string line, cmd;
    bool on = false;
    while (std::getline(in, line)) {
      if (!on && line.rfind("curl ", 0) == 0) on = true;
      if (!on) continue;
      cmd += line + "\n";
      if (line.empty() || line.back() != '\\') break;
    }
    return cmd;
  }
  std::string project_key() const {
    std::string o = output();
    size_t at = o.find("Project key:");
    if (at == std::string::npos) return "";
    at = o.find("sk-", at);
    return o.substr(at, o.find_first_of(" \n", at) - at);
  }
};

std::string run_sh(const std::string& cmd, int* rc) {
  std::string file = fs::temp_directory_path() / ("aicloud-up-test-" + std::to_string(getpid()) + ".sh");
  {
    std::ofstream f(file);
    f << cmd;
  }
  FILE* p = popen(("sh " + file + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  fs::remove(file);
  return out;
}

TEST(Up, StartsServesThePrintedCurlStopsEverythingAndRestartsWithTheSameKey) {
  TempDir tmp;
  chmod(tmp.path().c_str(), 0711);  // the agent runs workloads as nobody when root
  std::string data = tmp.path() + "/data";
  std::string node_dir = data + "/node/";
  std::string key;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "first start" : "second start");
    int port = free_port();
    UpProcess up(data, port);
    ASSERT_TRUE(up.wait_ready(55s)) << up.output() << "\n--- server.log:\n" << slurp(data + "/server.log")
                                    << "\n--- agent.log:\n" << slurp(data + "/agent.log");
    std::string out = up.output();
    EXPECT_NE(out.find("http://127.0.0.1:" + std::to_string(port) + "/v1"), std::string::npos) << out;
    EXPECT_NE(out.find("import OpenAI from \"openai\""), std::string::npos) << out;
    std::string k = up.project_key();
    ASSERT_EQ(k.rfind("sk-proj-", 0), 0u) << out;
    struct stat st {};
    ASSERT_EQ(stat((data + "/project.key").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    if (round == 0) {
      key = k;
    } else {
      EXPECT_EQ(k, key) << "a second start reuses the project key";
    }

    std::string curl = up.curl_command();
    ASSERT_NE(curl.find("/v1/chat/completions"), std::string::npos) << out;
    int rc = 0;
    std::string body = run_sh(curl, &rc);
    ASSERT_EQ(rc, 0) << body;
    json j = json::parse(body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << body;
    EXPECT_EQ(j["object"], "chat.completion") << body;
    EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string()) << body;

    // The model's engine runs under the node's work dir while up runs ...
    EXPECT_FALSE(processes_mentioning(node_dir).empty());
    EXPECT_EQ(up.terminate(40s), 0) << up.output();
    // ... and nothing it started is left: server, agent, supervisors, llama-server.
    EXPECT_TRUE(processes_mentioning(data + "/").empty()) << up.output();
    EXPECT_NE(up.output().find("Stopped."), std::string::npos) << up.output();
  }
}

}  // namespace
