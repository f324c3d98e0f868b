// A small cloud that serves the tiny model, for the gateway's tests: a server, one agent with two
// declared H100s (region eu-west-1), the tiny model made by `aicloud models create-tiny` and
// imported into the catalog, two tenants (acme and beta), and a ready deployment of the model in
// acme's project. Everything is a real process (the replica is the real llama-server).
#pragma once
#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "support/server_process.h"

namespace aicloud::test {

// What a test may change in the cloud it gets.
struct ModelCloudOptions {
  std::vector<std::string> server_args;  // appended to the server's command line
};

struct ModelCloud {
  // Throws std::runtime_error (with the state it saw) if the deployment is not ready in 60 s.
  ModelCloud() : ModelCloud(ModelCloudOptions{}) {}
  explicit ModelCloud(ModelCloudOptions opts);
  ~ModelCloud();
  ModelCloud(const ModelCloud&) = delete;
  ModelCloud& operator=(const ModelCloud&) = delete;

  http::ClientResponse post(const std::string& key, const std::string& path, const json& body);
  static json chat(const std::string& text, int max_tokens = 8);  // a chat request to tiny-llama

  // The llama-server processes running under this cloud's work dir: pid -> the port it listens on.
  std::map<pid_t, int> engine_processes() const;

  TempDir work;  // the agent's work dir and the model file; processes left under it end with it
  std::unique_ptr<ServerProcess> srv;
  std::unique_ptr<http::Client> c;
  pid_t agent = -1;
  Tenant a, b;
  std::string dep_id;
};

}  // namespace aicloud::test
