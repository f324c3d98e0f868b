// The tenant's compute (/v1/compute, acting in a project): offers, instances, jobs and services
// with their logs (followed by polling) and exec; reservations (and the operator's approval);
// quotas (set by the operator, read by the tenant).
#include <CLI/CLI.hpp>

#include <chrono>
#include <iostream>
#include <thread>

#include "cli/command_kit.h"
#include "cli/commands.h"
#include "cli/errors.h"

namespace aicloud::cli {
namespace {

// How often a follower asks again when nothing new came.
constexpr auto kPollIdle = std::chrono::milliseconds(300);
constexpr auto kPollBusy = std::chrono::milliseconds(100);

int64_t int_at(const json& o, const char* key, int64_t dflt = 0) {
  auto it = o.find(key);
  return it != o.end() && it->is_number_integer() ? it->get<int64_t>() : dflt;
}
std::string str_at(const json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get<std::string>() : "";
}

// ---- columns ---------------------------------------------------------------------------------

// "2x H100-80GB", or "16x H100-80GB (2 nodes)" for a gang.
std::string gpus_text(int64_t nodes, int64_t per_node, const json& type) {
  if (per_node <= 0) return "-";
  std::string s = std::to_string(nodes * per_node) + "x " + cell_text(type);
  if (nodes > 1) s += " (" + std::to_string(nodes) + " nodes)";
  return s;
}
Column workload_gpus() {
  return {"GPUS", [](const json& w) {
            const json& spec = w.value("spec", json::object());
            return gpus_text(int_at(spec, "nodes", 1), int_at(spec, "gpus_per_node"), spec.value("gpu_type", json()));
          }};
}
const std::vector<Column> kWorkloadColumns = {field("ID", "id"),
                                              field("NAME", "name"),
                                              workload_gpus(),
                                              field("REGION", "spec.region"),
                                              field("CLASS", "spec.class"),
                                              field("PHASE", "status.phase"),
                                              time_field("CREATED", "created_at"),
                                              field("REASON", "status.reason")};

void print_workload(const json& w) {
  std::string type = str_at(w, "object");
  std::vector<Column> cols = {field("ID", "id"),
                              field("NAME", "name"),
                              field("PHASE", "status.phase"),
                              field("REASON", "status.reason"),
                              workload_gpus(),
                              field("REGION", "spec.region"),
                              field("ZONE", "spec.zone"),
                              field("CLASS", "spec.class"),
                              field("PRIORITY", "spec.priority"),
                              {"COMMAND", [](const json& o) { return format_command(o["spec"].value("command", json())); }},
                              {"ENV", [](const json& o) {
                                 std::string s;
                                 const json env = o["spec"].value("env", json::object());
                                 for (const auto& [k, v] : env.items()) {
                                   s += (s.empty() ? "" : " ") + k + "=" + cell_text(v);
                                 }
                                 return s.empty() ? std::string("-") : s;
                               }}};
  if (type == "compute.job") cols.push_back(field("MAX RETRIES", "spec.max_retries"));
  if (type == "compute.service") {
    cols.push_back(field("PORT", "spec.port"));
    cols.push_back(field("HEALTH PATH", "spec.health_check.path"));
  }
  cols = cols + std::vector<Column>{field("ATTEMPTS", "status.attempts"), field("EXIT CODE", "status.exit_code"),
                                    time_field("CREATED", "created_at"), time_field("STARTED", "status.started_at"),
                                    time_field("FINISHED", "status.finished_at")};
  if (!w.contains("spec") || !w["spec"].is_object() || !w.contains("status") || !w["status"].is_object()) {
    print_object(std::cout, {field("ID", "id"), field("OBJECT", "object")}, w);
    return;
  }
  print_object(std::cout, cols, w);

  // One row per rank: where it runs and how it is doing.
  const json& placements = w["status"].value("placements", json::array());
  if (placements.is_array() && !placements.empty()) {
    const json& ranks = w["status"].value("ranks", json::array());
    json rows = json::array();
    for (const auto& p : placements) {
      json row = p;
      for (const auto& r : ranks) {
        if (r.value("rank", -1) == p.value("rank", -2)) {
          row["phase"] = r.value("phase", json());
          row["exit_code"] = r.value("exit_code", json());
        }
      }
      rows.push_back(row);
    }
    std::cout << "\n";
    print_table(std::cout,
                {field("RANK", "rank"), field("NODE", "node_name"), field("NODE ID", "node_id"), field("GPU IDS", "gpus"),
                 field("PHASE", "phase"), field("EXIT CODE", "exit_code")},
                rows);
  }
}

const std::vector<Column> kOfferColumns = {
    field("GPU TYPE", "gpu_type"),
    field("REGION", "region"),
    field("CLASS", "class"),
    {"AVAILABLE", [](const json& o) {
       return cell_text(o.value("gpus_available", json())) + "/" + cell_text(o.value("gpus_total", json()));
     }},
    field("NODES", "nodes")};

const std::vector<Column> kReservationColumns = {
    field("ID", "id"),
    field("NAME", "name"),
    {"GPUS", [](const json& r) { return gpus_text(1, int_at(r, "gpus"), r.value("gpu_type", json())); }},
    field("REGION", "region"),
    time_field("START", "start_time"),
    time_field("END", "end_time"),
    field("STATUS", "status"),
    field("ACTIVE", "active")};
const std::vector<Column> kReservationDetail =
    kReservationColumns + std::vector<Column>{field("ORGANIZATION", "organization_id"),
                                              field("PROJECT", "project_id"),
                                              time_field("CREATED", "created_at"),
                                              time_field("APPROVED", "approved_at"),
                                              time_field("REJECTED", "rejected_at"),
                                              field("REJECTION REASON", "rejection_reason"),
                                              time_field("CANCELLED", "cancelled_at")};

const std::vector<Column> kQuotaColumns = {
    field("ID", "id"),
    {"SCOPE", [](const json& q) {
       std::string p = str_at(q, "project_id");
       return p.empty() ? "organization " + cell_text(q.value("organization_id", json())) : "project " + p;
     }},
    {"GPU TYPE", [](const json& q) { return str_at(q, "gpu_type").empty() ? "any" : str_at(q, "gpu_type"); }},
    {"REGION", [](const json& q) { return str_at(q, "region").empty() ? "any" : str_at(q, "region"); }},
    field("MAX GPUS", "max_gpus"),
    field("USED", "used_gpus")};

// ---- workloads --------------------------------------------------------------------------------

struct Kind {
  std::string type;    // instance | job | service
  std::string plural;  // URL segment and CLI noun
  std::string prefix;  // id prefix, for help texts
  std::string stop;    // stop | cancel
};
const Kind kInstances{"instance", "instances", "inst_", "stop"};
const Kind kJobs{"job", "jobs", "job_", "cancel"};
const Kind kServices{"service", "services", "svc_", "stop"};

std::string base_path(const Kind& k) { return "/v1/compute/" + k.plural; }

json workload_body(const Flags& f, const Kind& k) {
  json body = fields({{"name", f.name}, {"region", f.region}, {"zone", f.zone}, {"gpu_type", f.gpu_type}});
  if (!f.capacity_class.empty()) {
    std::string cls = f.capacity_class;
    for (char& c : cls) c = c == '-' ? '_' : c;  // on-demand is on_demand
    body["class"] = cls;
  }
  put_int(body, "priority", f.priority);
  put_int(body, "memory_mb", f.memory_mb);
  if (!f.env.empty()) body["env"] = parse_pairs("--env", f.env);
  if (k.type == "job") {
    put_int(body, "nodes", f.nodes);
    put_int(body, "gpus_per_node", f.gpus_per_node);
    put_int(body, "max_retries", f.max_retries);
  } else {
    put_int(body, "gpus", f.gpus);
  }
  if (k.type == "service") {
    put_int(body, "port", f.port);
    if (!f.health_path.empty()) body["health_check"] = {{"path", f.health_path}};
  }
  if (!f.command.empty()) {
    body["command"] = f.command;
  } else if (k.type != "instance") {
    throw CliError("a " + k.type + " needs a command: aicloud " + k.plural + " create ... -- COMMAND [ARGS...]",
                   kExitUsage);
  }
  return body;
}

void workload_flags(CLI::App* v, Flags& f, const Kind& k) {
  v->add_option("--region", f.region, "The region to run in, e.g. eu-west-1")->required();
  v->add_option("--gpu-type", f.gpu_type, "The GPU model, e.g. H100-80GB");
  if (k.type == "job") {
    v->add_option("--nodes", f.nodes, "How many nodes (ranks), gang-scheduled all or nothing (default 1)");
    v->add_option("--gpus-per-node", f.gpus_per_node, "GPUs on each node (default 1)");
    v->add_option("--max-retries", f.max_retries, "Retries after a failure or a lost node (default 0)");
  } else {
    v->add_option("--gpus", f.gpus, "How many GPUs (default 1)");
  }
  if (k.type == "service") {
    v->add_option("--port", f.port, "The port it listens on")->required();
    v->add_option("--health-path", f.health_path, "Its HTTP health check: GET this path on the port (default /health)");
  }
  v->add_option("--zone", f.zone, "A zone (data centre) of the region");
  v->add_option("--class", f.capacity_class, "Capacity class: on-demand (default), spot or reserved")
      ->check(CLI::IsMember({"on-demand", "on_demand", "spot", "reserved"}));
  v->add_option("--name", f.name, "A name to recognise it by (default: its id)");
  // One value per --env, so that a `--` after it starts the command instead of ending its list.
  v->add_option("--env", f.env, "An environment variable KEY=VALUE (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  v->add_option("--priority", f.priority, "Priority within its class, 0-1000 (default 0)");
  v->add_option("--memory-mb", f.memory_mb, "Memory limit in MiB (default: none)");
  std::string what = k.type == "instance" ? "What it runs (default: an idle shell)" : "What it runs";
  v->add_option("command", f.command,
                what + ", after --: one argument is a shell command line, several are run as they are");
}

// Follows one rank's log by polling: prints text as it arrives, until the workload is done.
void follow_logs(Api& api, const std::string& path, const std::string& what, int64_t rank, bool json_lines) {
  int64_t offset = 0;
  bool awaiting_retry = false;  // the workload went back to pending: its next attempt starts a new log
  std::string phase;
  for (int after_done = 0;;) {
    json r = api.call({"GET", path + "/logs", {{"rank", std::to_string(rank)}, {"offset", std::to_string(offset)}}});
    int64_t from = int_at(r, "offset", offset), next = int_at(r, "next_offset", offset);
    std::string text = str_at(r, "text");
    phase = str_at(r, "phase");
    bool done = r.value("done", false);
    if (awaiting_retry && phase != "pending") {
      awaiting_retry = false;
      offset = 0;
      std::cerr << "--- the workload was retried: the next attempt's log ---\n";
      continue;
    }
    if (phase == "pending" && offset > 0) awaiting_retry = true;
    if (next < offset) {  // a shorter log than what was read: a new attempt
      offset = 0;
      std::cerr << "--- the workload was retried: the next attempt's log ---\n";
      continue;
    }
    if (from > offset) std::cerr << "[... " << (from - offset) << " bytes no longer kept by the server ...]\n";
    if (!text.empty()) {
      if (json_lines) {
        std::cout << r.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
      } else {
        std::cout << text;
      }
      std::cout << std::flush;
    }
    offset = std::max(offset, next);
    // Done: read on while the last chunks still come (they may trail the exit report).
    if (done && (text.empty() || ++after_done > 20)) break;
    std::this_thread::sleep_for(text.empty() ? kPollIdle : kPollBusy);
  }
  if (!json_lines) std::cerr << "(" << what << " " << phase << ")\n";
}

void add_logs_verb(CLI::App* n, Flags& f, const Kind& k) {
  auto* logs = verb(n, "logs", "Show a rank's output; -f follows it until the " + k.type + " ends", [&f, &k] {
    Api api = server(f);
    std::string path = base_path(k) + seg(f.id);
    if (f.follow) {
      follow_logs(api, path, f.id, f.rank, json_output(f));
      return;
    }
    api.show({"GET", path + "/logs", {{"rank", std::to_string(f.rank)}}}, [](const json& r) {
      std::cout << str_at(r, "text") << std::flush;
    });
  });
  id_arg(logs, f, k.type + " id (" + k.prefix + "...)");
  logs->add_flag("-f,--follow", f.follow, "Keep printing output as it arrives, until the " + k.type + " ends");
  logs->add_option("--rank", f.rank, k.type == "job" ? "Which rank (node) of the job (default 0)" : "Which rank (default 0)");
}

// Runs a command in a running instance and streams its output; the CLI exits with its code.
void exec_in_instance(const Flags& f) {
  if (f.command.empty()) throw CliError("nothing to run: aicloud instances exec ID -- COMMAND [ARGS...]", kExitUsage);
  Api api = server(f);
  std::string path = base_path(kInstances) + seg(f.id) + "/exec";
  // One argument is a shell command line (the server runs a string with sh -c), as for create.
  json body = {{"command", f.command.size() == 1 ? json(f.command[0]) : json(f.command)}};
  put_int(body, "timeout_seconds", f.timeout);
  json r = api.call({"POST", path, {}, body});
  std::string exec_id = str_at(r, "id");
  if (exec_id.empty()) throw CliError("the server's answer to exec has no id: " + r.dump());
  std::string all;
  int64_t offset = 0;
  while (true) {
    std::string text = str_at(r, "output");
    all += text;
    if (!json_output(f) && !text.empty()) std::cout << text << std::flush;
    offset = std::max(offset, int_at(r, "next_offset", offset + int64_t(text.size())));
    std::string status = str_at(r, "status");
    if (status != "pending" && status != "running") break;
    std::this_thread::sleep_for(text.empty() ? kPollIdle : kPollBusy);
    r = api.call({"GET", path + seg(exec_id), {{"offset", std::to_string(offset)}}});
  }
  if (json_output(f)) {
    r["output"] = all;  // the whole output, not only the last chunk
    std::cout << r.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  }
  const json& code = r.value("exit_code", json());
  int64_t c = code.is_number_integer() ? code.get<int64_t>() : -1;
  int exit_code = c >= 0 && c < 256 ? int(c) : kExitFailure;
  if (r.value("timed_out", false)) {
    std::cerr << "error: the command timed out after " << cell_text(r.value("timeout_seconds", json()))
              << " seconds and was killed (--timeout)\n";
    throw CliExit{c > 0 && c < 256 ? int(c) : 124};
  }
  if (r.contains("error") && r["error"].is_string()) {
    throw CliError("the command could not run: " + r["error"].get<std::string>(), exit_code == 0 ? kExitFailure : exit_code);
  }
  if (!code.is_number_integer()) {
    throw CliError("the command ended (" + cell_text(r.value("status", json())) + ") without an exit code");
  }
  if (c != 0) throw CliExit{exit_code};
}

void add_workload_commands(CLI::App& app, Flags& f, const Kind& k, const std::string& help,
                           const std::string& create_help) {
  auto* n = noun(app, k.plural, help);
  const std::string base = base_path(k);
  const std::string id_help = k.type + " id (" + k.prefix + "...)";

  workload_flags(verb(n, "create", create_help,
                      [&f, &k, base] { server(f).show({"POST", base, {}, workload_body(f, k)}, print_workload); }),
                 f, k);
  paging_flags(verb(n, "list", "List the project's " + k.plural + ", newest first",
                    [&f, base] { server(f).show({"GET", base, paging(f)}, list_of(kWorkloadColumns)); }),
               f);
  const std::string a_kind = (k.type == "instance" ? "an " : "a ") + k.type;
  id_arg(verb(n, "get", "Show " + a_kind + ", with where each rank runs",
              [&f, base] { server(f).show({"GET", base + seg(f.id)}, print_workload); }),
         f, id_help);

  std::string stop_help = k.stop == "cancel" ? "Cancel a job: its ranks get SIGTERM, then SIGKILL after the grace period"
                                             : "Stop " + a_kind + ": SIGTERM, then SIGKILL after the grace period";
  auto* stop = verb(n, k.stop, stop_help, [&f, &k, base] {
    json body = json::object();
    put_int(body, "grace_period_seconds", f.grace);
    server(f).show({"POST", base + seg(f.id) + "/" + k.stop, {}, body}, print_workload);
  });
  id_arg(stop, f, id_help);
  stop->add_option("--grace", f.grace, "Seconds between SIGTERM and SIGKILL (default 30)");
  add_logs_verb(n, f, k);

  std::string delete_help = k.type == "instance" ? "Delete an instance (stopping it first if it runs)"
                                                 : "Delete " + a_kind + " that has ended (" + k.stop + " it first)";
  id_arg(verb(n, "delete", delete_help, [&f, base] { server(f).show({"DELETE", base + seg(f.id)}, deleted()); }), f,
         id_help);

  if (k.type != "instance") return;
  id_arg(verb(n, "start", "Start a stopped instance again, with the same spec",
              [&f, base] { server(f).show({"POST", base + seg(f.id) + "/start", {}, json::object()}, print_workload); }),
         f, id_help);
  auto* exec = verb(n, "exec", "Run a command inside a running instance; exits with the command's exit code",
                    [&f] { exec_in_instance(f); });
  id_arg(exec, f, id_help);
  exec->add_option("command", f.command,
                   "What to run, after --: one argument is a shell command line, several are run as they are")
      ->required();
  exec->add_option("--timeout", f.timeout, "Kill the command after this many seconds (default 60)");
}

// ---- offers, reservations, quotas ---------------------------------------------------------------

void add_offer_command(CLI::App& app, Flags& f) {
  verb(&app, "offers", "What can be launched now: free GPUs by type, region and class", [&f] {
    server(f).show({"GET", "/v1/compute/offers"}, list_of(kOfferColumns));
  });
}

void add_reservation_commands(CLI::App& app, Flags& f) {
  const std::string base = "/v1/compute/reservations";
  const std::string admin = "/admin/v1/reservations";
  auto* n = noun(app, "reservations", "GPUs reserved for the organization from a start to an end; the operator approves");

  auto* create = verb(n, "create", "Ask for a reservation (pending until the operator approves it)", [&f, base] {
    if (!f.end.empty() && !f.duration.empty()) throw CliError("give --end or --duration, not both", kExitUsage);
    if (f.end.empty() && f.duration.empty()) throw CliError("a reservation needs --end or --duration", kExitUsage);
    int64_t start = parse_time("--start", f.start.empty() ? "now" : f.start);
    int64_t end = f.end.empty() ? add_duration("--duration", start, f.duration) : parse_time("--end", f.end);
    json body = fields({{"gpu_type", f.gpu_type}, {"region", f.region}, {"name", f.name}});
    put_int(body, "gpus", f.gpus);
    body["start_time"] = start;
    body["end_time"] = end;
    server(f).show({"POST", base, {}, body}, one(kReservationDetail));
  });
  create->add_option("--gpus", f.gpus, "How many GPUs")->required();
  create->add_option("--gpu-type", f.gpu_type, "The GPU model, e.g. H100-80GB")->required();
  create->add_option("--region", f.region, "The region, e.g. eu-west-1")->required();
  create->add_option("--start", f.start, "From: 2027-01-01, 2027-01-01T09:00:00Z, unix seconds or now (default now)");
  create->add_option("--end", f.end, "Until (exclusive): a date, a date and time, or unix seconds");
  create->add_option("--duration", f.duration, "Or how long: 30d, 6mo, 1y, 3y (instead of --end)");
  create->add_option("--name", f.name, "A name to recognise it by");

  auto* list = verb(n, "list", "List reservations (the operator: every organization's, or --org's)", [&f, base, admin] {
    Api api = server(f);
    Request::Query q = paging(f);
    q.emplace_back("status", f.status);
    std::string path = base;
    if (is_operator_key(api.settings().api_key)) {
      path = admin;
      q.emplace_back("organization_id", api.settings().org);
    }
    api.show({"GET", path, q}, list_of(kReservationColumns));
  });
  paging_flags(list, f);
  list->add_option("--status", f.status, "Only these: pending_approval, approved, rejected, cancelled, active, expired");

  id_arg(verb(n, "get", "Show a reservation",
              [&f, base] { server(f).show({"GET", base + seg(f.id)}, one(kReservationDetail)); }),
         f, "Reservation id (resv_...)");
  id_arg(verb(n, "cancel", "Cancel a reservation",
              [&f, base] { server(f).show({"POST", base + seg(f.id) + "/cancel", {}, json::object()}, one(kReservationDetail)); }),
         f, "Reservation id (resv_...)");
  id_arg(verb(n, "approve", "Approve a pending reservation (operator key); refused if the fleet cannot keep it",
              [&f, admin] {
                server(f).show({"POST", admin + seg(f.id) + "/approve", {}, json::object()}, one(kReservationDetail));
              }),
         f, "Reservation id (resv_...)");
  auto* reject = verb(n, "reject", "Reject a pending reservation (operator key)", [&f, admin] {
    server(f).show({"POST", admin + seg(f.id) + "/reject", {}, fields({{"reason", f.reason}})}, one(kReservationDetail));
  });
  id_arg(reject, f, "Reservation id (resv_...)");
  reject->add_option("--reason", f.reason, "Why (shown to the organization)");
}

void add_quota_commands(CLI::App& app, Flags& f) {
  auto* n = noun(app, "quotas", "Caps on the GPUs an organization or project holds (set by the operator)");
  // The operator's routes name the organization in the path.
  auto org_path = [&f](const Api& api) {
    if (api.settings().org.empty()) {
      throw CliError("name the organization with --org ORG_ID (or AICLOUD_ORG)", kExitUsage);
    }
    return "/admin/v1/organizations" + seg(api.settings().org) + "/quotas";
  };

  auto* set = verb(n, "set", "Set an organization's (or, with --project, a project's) GPU quota (operator key)",
                   [&f, org_path] {
                     Api api = server(f);
                     // The scope is the --project flag only: AICLOUD_PROJECT should not narrow a quota unseen.
                     json body = fields({{"gpu_type", f.gpu_type}, {"region", f.region}, {"project_id", f.global.project}});
                     put_int(body, "max_gpus", f.max_gpus);
                     api.show({"POST", org_path(api), {}, body}, one(kQuotaColumns));
                   });
  set->add_option("--max-gpus", f.max_gpus, "At most this many GPUs held at once (on-demand and spot)")->required();
  set->add_option("--gpu-type", f.gpu_type, "Only GPUs of this model (default: any)");
  set->add_option("--region", f.region, "Only in this region (default: any)");

  verb(n, "list", "List quotas and what is held against them: the operator's for --org, else the project's", [&f, org_path] {
    Api api = server(f);
    std::string path = is_operator_key(api.settings().api_key) ? org_path(api) : "/v1/compute/quotas";
    api.show({"GET", path}, list_of(kQuotaColumns));
  });

  id_arg(verb(n, "delete", "Delete a quota (operator key, with --org)",
              [&f, org_path] {
                Api api = server(f);
                api.show({"DELETE", org_path(api) + seg(f.id)}, deleted());
              }),
         f, "Quota id (quota_...)");
}

}  // namespace

void add_compute_commands(CLI::App& app, Flags& f) {
  add_offer_command(app, f);
  add_workload_commands(app, f, kInstances, "GPU instances: long-running machines with N GPUs",
                        "Launch an instance: aicloud instances create --gpus 2 --gpu-type H100-80GB --region eu-west-1 "
                        "[-- COMMAND...]");
  add_workload_commands(app, f, kJobs, "Batch jobs: NODES x GPUS_PER_NODE, gang-scheduled, with retries",
                        "Submit a job: aicloud jobs create --nodes 2 --gpus-per-node 8 --gpu-type H100-80GB "
                        "--region eu-west-1 -- COMMAND...");
  add_workload_commands(app, f, kServices, "Services: long-running, with a port and an HTTP health check",
                        "Run a service: aicloud services create --port 8000 --gpu-type H100-80GB --region eu-west-1 "
                        "-- COMMAND...");
  add_reservation_commands(app, f);
  add_quota_commands(app, f);
}

}  // namespace aicloud::cli
