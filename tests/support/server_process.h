// Starts a real `aicloud server` process on a free port with its own data dir, for integration
// tests; stops it (SIGTERM, or SIGKILL to test crashes) and can restart it on the same data.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "http/client.h"
#include "util/json_util.h"

namespace aicloud::test {

// The binary under test: $AICLOUD_BIN, else build/aicloud next to the test binary.
std::string aicloud_binary();

// The source tree (for tests that check the code itself, e.g. that every route is covered):
// $AICLOUD_SOURCE_DIR, else CMAKE_HOME_DIRECTORY from the CMakeCache.txt next to the binary under
// test. "" if neither is found.
std::string source_dir();

// A whole file's bytes ("" if it cannot be read).
std::string slurp(const std::string& path);
// A loopback TCP port that was free a moment ago.
int free_port();

// A fresh temporary directory, removed at destruction unless AICLOUD_KEEP_TMP is set.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class ServerProcess {
 public:
  // extra_args are appended to `aicloud server --listen 127.0.0.1:0 --data-dir DIR`.
  explicit ServerProcess(std::vector<std::string> extra_args = {}, std::map<std::string, std::string> env = {});
  ~ServerProcess();

  void start();               // waits until /healthz answers (throws after 15 s)
  int stop_graceful();        // SIGTERM; returns the exit status
  void kill9();               // SIGKILL, no cleanup
  void signal(int sig);       // sends sig and returns at once (e.g. SIGTERM while requests are in flight)
  // Waits up to timeout for the process to exit; its exit status (as stop_graceful), or nullopt
  // if it is still running.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  bool running() const { return pid_ > 0; }

  const std::string& url() const { return url_; }
  const std::string& data_dir() const { return dir_.path(); }
  const std::string& admin_key() const { return admin_key_; }
  std::string log() const;    // what the process wrote to stdout and stderr
  pid_t pid() const { return pid_; }

  // A new client of this server.
  std::unique_ptr<http::Client> client() const;

 private:
  TempDir dir_;
  std::vector<std::string> extra_args_;
  std::map<std::string, std::string> env_;
  pid_t pid_ = -1;
  std::string url_, admin_key_;
};

// JSON over HTTP with a bearer key, for tests.
struct Api {
  http::Client& c;
  std::string key;
  std::string org;  // sent as OpenAI-Organization when set

  http::ClientResponse call(const std::string& method, const std::string& path, const json& body = nullptr,
                            std::vector<std::pair<std::string, std::string>> headers = {});
  // Asserting helpers: fail the test (via exception) unless the status matches.
  json get(const std::string& path, unsigned want = 200);
  json post(const std::string& path, const json& body, unsigned want = 200);
  json del(const std::string& path, unsigned want = 200);
};

// A tenant for tests: an organization with an owner, an admin key and a project key.
struct Tenant {
  std::string org_id, owner_email, owner_password, admin_key, project_id, project_key;
};
Tenant make_tenant(http::Client& c, const std::string& operator_key, const std::string& name);

}  // namespace aicloud::test
