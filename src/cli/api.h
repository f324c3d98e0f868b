// The one way a CLI command talks to the server: send a request, turn every failure into a
// one-line CliError, and print the response (-o json: the server's JSON; else a table).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cli/config.h"
#include "http/client.h"
#include "util/json_util.h"

namespace aicloud::cli {

struct Request {
  using Query = std::vector<std::pair<std::string, std::string>>;
  Request(std::string m, std::string p, Query q = {}, json b = nullptr)
      : method(std::move(m)), path(std::move(p)), query(std::move(q)), body(std::move(b)) {}

  std::string method;
  std::string path;  // e.g. "/v1/organization/projects"
  Query query;       // empty values are left out
  json body;         // sent as JSON when not null
};

// Percent-encodes one path segment or query value, so that ids typed by the user stay one segment.
std::string url_encode(std::string_view s);

class Api {
 public:
  // Prints the human view of a response.
  using Printer = std::function<void(const json& response)>;

  Api(Settings settings, bool json_output);
  ~Api();

  // Sends r; returns the parsed response, or throws CliError (server unreachable, HTTP error,
  // a body that is not JSON). with_credential=false sends no API key (login).
  json call(const Request& r, bool with_credential = true);

  // call, then print: the server's JSON as it is with -o json, else table(response).
  json show(const Request& r, const Printer& table);

  const Settings& settings() const { return settings_; }
  bool json_output() const { return json_output_; }

 private:
  Settings settings_;
  bool json_output_;
  std::unique_ptr<http::Client> client_;  // connected on the first call
  std::string last_body_;
};

}  // namespace aicloud::cli
