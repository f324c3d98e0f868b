// Every `aicloud <noun> <verb>` of the CLI: its flags, the request it sends and how it shows
// the answer. Commands run from CLI11's callbacks and fail by throwing CliError.
#pragma once
#include <cstdint>
#include <string>

#include "cli/config.h"

namespace CLI {
class App;
}

namespace aicloud::cli {

// The values of every flag, filled in by CLI11 as it parses. One verb runs per invocation, so
// the verbs share the fields they have in common.
struct Flags {
  // Global: every command takes them, after the verb too.
  Settings global;               // --url, --api-key, --org
  std::string output = "table";  // -o table|json
  // The verbs' own.
  std::string id, name, email, password, role, project, reason;
  std::string owner_email, owner_password;
  std::string limit, after;  // passed through as typed: the server validates them
  bool include_archived = false;
  std::string actor, action, resource, since, until, data_dir;
  std::string signup_enabled;
  int64_t session_ttl = 0;
};

// Adds the global flags and every command to app; f must outlive app's parse, during which
// the chosen command runs.
void add_commands(CLI::App& app, Flags& f);

}  // namespace aicloud::cli
