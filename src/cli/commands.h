// Every `aicloud <noun> <verb>` of the CLI: its flags, the request it sends and how it shows
// the answer. Commands run from CLI11's callbacks and fail by throwing CliError.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cli/config.h"

namespace CLI {
class App;
}

namespace aicloud::cli {

// An integer flag that was not given (so that the body leaves the field out, and an explicit 0
// still reaches the server for it to judge).
inline constexpr int64_t kUnset = std::numeric_limits<int64_t>::min();

// The values of every flag, filled in by CLI11 as it parses. One verb runs per invocation, so
// the verbs share the fields they have in common.
struct Flags {
  // Global: every command takes them, after the verb too.
  Settings global;               // --url, --api-key, --org, --project
  std::string output = "table";  // -o table|json
  // The verbs' own.
  std::string id, name, email, password, role, project, reason;
  std::string owner_email, owner_password;
  std::string limit, after;  // passed through as typed: the server validates them
  bool include_archived = false;
  std::string actor, action, resource, since, until, data_dir;
  std::string signup_enabled;
  int64_t session_ttl = 0;

  // Capacity and compute (operator inventory; tenant workloads, reservations, quotas).
  std::string region, zone, jurisdiction, gpu_type, capacity_class, provider_type, upstream, cost;
  std::string term_start, term_end, description, expires_in, start, end, duration, health_path, status;
  std::vector<std::string> env, command;
  int64_t gpus = kUnset, nodes = kUnset, gpus_per_node = kUnset, max_retries = kUnset, priority = kUnset;
  int64_t port = kUnset, memory_mb = kUnset, max_uses = kUnset, power_budget_kw = kUnset, max_gpus = kUnset;
  int64_t timeout = kUnset, grace = kUnset, rank = 0;
  bool follow = false;
};

// Adds the global flags and every command to app; f must outlive app's parse, during which
// the chosen command runs.
void add_commands(CLI::App& app, Flags& f);
// Sorts the commands in the help into groups by who uses them and adds the examples under the
// top-level help; call after every command is added.
void group_commands(CLI::App& app);

// The groups of commands (each in its own file): the operator's fleet (regions, zones,
// capacity providers, join tokens, nodes) and the tenant's compute (offers, instances, jobs,
// services, reservations, quotas).
void add_capacity_commands(CLI::App& app, Flags& f);
void add_compute_commands(CLI::App& app, Flags& f);

}  // namespace aicloud::cli
