#include "cli/commands.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>

#include "audit/audit.h"
#include "cli/api.h"
#include "cli/command_kit.h"
#include "cli/errors.h"
#include "cli/output.h"
#include "cli/prompt.h"
#include "store/store.h"

namespace aicloud::cli {
namespace {

// ---- columns ---------------------------------------------------------------------------------

const std::vector<Column> kOrgColumns = {field("ID", "id"), field("NAME", "name"), field("STATUS", "status"),
                                         time_field("CREATED", "created_at")};
const std::vector<Column> kProjectColumns = kOrgColumns;
const std::vector<Column> kKeyColumns = {field("ID", "id"), field("NAME", "name"), field("KEY", "redacted_value"),
                                         time_field("CREATED", "created_at"), time_field("LAST USED", "last_used_at")};
const std::vector<Column> kUserColumns = {field("ID", "id"), field("EMAIL", "email"), field("NAME", "name"),
                                          field("ROLE", "role"), time_field("ADDED", "added_at")};
const std::vector<Column> kAuditColumns = {
    field("ID", "id"), time_field("TIME", "effective_at"), field("ACTION", "type"),
    {"ACTOR",
     [](const json& r) {
       std::string type = field("", "actor.type").cell(r), id = field("", "actor.id").cell(r);
       return id == "-" || id.empty() || id == type ? type : type + ":" + id;
     }},
    field("RESOURCE", "resource_id"), field("OUTCOME", "outcome")};

// ---- commands --------------------------------------------------------------------------------

void add_session_commands(CLI::App& app, Flags& f) {
  auto* login = verb(&app, "login", "Log in with email and password; saves the server URL and session token", [&f] {
    Settings s = resolve_settings(f.global);
    std::string email = f.email.empty() ? read_line("Email", true) : f.email;
    std::string password = f.password.empty() ? read_line("Password", false) : f.password;
    Api api(Settings{s.url, "", "", ""}, json_output(f));
    json r = api.call({"POST", "/v1/auth/login", {}, {{"email", email}, {"password", password}}}, false);

    std::string path = config_path();
    Settings saved = read_config(path);
    saved.url = s.url;
    saved.api_key = r.value("token", "");
    saved.org = f.global.org;  // a previous account's organization and project would not fit this one
    saved.project = f.global.project;
    write_config(path, saved);

    if (json_output(f)) {
      r.erase("token");  // secrets stay out of terminals and logs; it is in the config file
      std::cout << r.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
      return;
    }
    std::cout << "Logged in as " << field("", "user.email").cell(r) << " (" << field("", "user.id").cell(r) << ") at "
              << s.url << "; the session expires " << time_field("", "expires_at").cell(r) << ".\nSaved to " << path
              << "\n";
  });
  login->add_option("--email", f.email, "Your email (asked for when not given)");
  login->add_option("--password", f.password, "Your password (asked for without echo when not given)");

  verb(&app, "logout", "End the saved session and remove it from the config file", [&f] {
    std::string path = config_path();
    Settings saved = read_config(path);
    if (saved.api_key.empty()) {
      std::cout << "Not logged in.\n";
      return;
    }
    if (saved.api_key.rfind("sess-", 0) == 0) {
      Settings s = resolve_settings(f.global);
      try {
        Api(Settings{s.url, saved.api_key, "", ""}, false).call({"POST", "/v1/auth/logout"});
      } catch (const CliError& e) {
        std::cerr << "warning: could not end the session on the server (" << e.what() << "); it expires by itself\n";
      }
    }
    saved.api_key.clear();
    saved.org.clear();
    saved.project.clear();
    write_config(path, saved);
    std::cout << "Logged out.\n";
  });

  verb(&app, "whoami", "Show who the current credential is (GET /v1/me)", [&f] {
    Api api = server(f);
    std::string url = api.settings().url;
    api.show({"GET", "/v1/me"}, [url](const json& r) {
      std::vector<Column> cols = {{"SERVER", [url](const json&) { return url; }},
                                  field("TYPE", "type"),
                                  field("ID", "id")};
      if (r.contains("email")) cols.push_back(field("EMAIL", "email"));
      cols = cols + std::vector<Column>{field("ORGANIZATION", "organization_id"), field("PROJECT", "project_id"),
                                        field("ROLE", "role")};
      print_object(std::cout, cols, r);
      if (r.contains("organizations") && !r["organizations"].empty()) {
        std::cout << "\n";
        print_table(std::cout, {field("ORGANIZATION", "id"), field("NAME", "name"), field("ROLE", "role")},
                    r["organizations"]);
      }
    });
  });
}

void add_org_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/organizations";
  const auto detail = kOrgColumns + std::vector<Column>{field("SUSPENDED REASON", "suspended_reason")};
  auto* orgs = noun(app, "orgs", "Organizations (operator key)");

  paging_flags(verb(orgs, "list", "List organizations",
                    [&f, base] { server(f).show({"GET", base, paging(f)}, list_of(kOrgColumns)); }),
               f);

  auto* create = verb(orgs, "create", "Create an organization with a default project and, optionally, its owner",
                      [&f, base, detail] {
                        json body = fields({{"name", f.name},
                                            {"owner_email", f.owner_email},
                                            {"owner_password", f.owner_password}});
                        body["name"] = f.name;  // sent even when empty, for the server to name it
                        server(f).show({"POST", base, {}, body}, one(detail));
                      });
  create->add_option("--name", f.name, "Its name")->required();
  create->add_option("--owner-email", f.owner_email, "Its owner: an existing user, or a new one");
  create->add_option("--owner-password", f.owner_password, "The owner's password, when the owner is a new user");

  id_arg(verb(orgs, "get", "Show an organization",
              [&f, base, detail] { server(f).show({"GET", base + seg(f.id)}, one(detail)); }),
         f, "Organization id (org-...)");

  auto* update = verb(orgs, "update", "Rename an organization", [&f, base, detail] {
    server(f).show({"POST", base + seg(f.id), {}, {{"name", f.name}}}, one(detail));
  });
  id_arg(update, f, "Organization id (org-...)");
  update->add_option("--name", f.name, "The new name")->required();

  auto* suspend = verb(orgs, "suspend", "Suspend an organization: all its credentials stop working",
                       [&f, base, detail] {
                         server(f).show({"POST", base + seg(f.id) + "/suspend", {}, fields({{"reason", f.reason}})},
                                      one(detail));
                       });
  id_arg(suspend, f, "Organization id (org-...)");
  suspend->add_option("--reason", f.reason, "Why (shown to the operator)");

  id_arg(verb(orgs, "unsuspend", "Lift a suspension",
              [&f, base, detail] { server(f).show({"POST", base + seg(f.id) + "/unsuspend"}, one(detail)); }),
         f, "Organization id (org-...)");
}

void add_project_commands(CLI::App& app, Flags& f) {
  const std::string base = "/v1/organization/projects";
  const auto detail = kProjectColumns + std::vector<Column>{time_field("ARCHIVED", "archived_at")};
  auto* projects = noun(app, "projects", "Projects of the organization");

  auto* list = verb(projects, "list", "List projects", [&f, base] {
    auto query = paging(f);
    if (f.include_archived) query.emplace_back("include_archived", "true");
    server(f).show({"GET", base, query}, list_of(kProjectColumns));
  });
  paging_flags(list, f);
  list->add_flag("--include-archived", f.include_archived, "Show archived projects too");

  auto* create = verb(projects, "create", "Create a project", [&f, base, detail] {
    server(f).show({"POST", base, {}, {{"name", f.name}}}, one(detail));
  });
  create->add_option("--name", f.name, "Its name")->required();

  id_arg(verb(projects, "get", "Show a project",
              [&f, base, detail] { server(f).show({"GET", base + seg(f.id)}, one(detail)); }),
         f, "Project id (proj_...)");

  auto* update = verb(projects, "update", "Rename a project", [&f, base, detail] {
    server(f).show({"POST", base + seg(f.id), {}, {{"name", f.name}}}, one(detail));
  });
  id_arg(update, f, "Project id (proj_...)");
  update->add_option("--name", f.name, "The new name")->required();

  id_arg(verb(projects, "archive", "Archive a project: its API keys stop working",
              [&f, base, detail] { server(f).show({"POST", base + seg(f.id) + "/archive"}, one(detail)); }),
         f, "Project id (proj_...)");
}

void add_key_commands(CLI::App& app, Flags& f) {
  // A new key's secret is in the answer once; only its hash is kept.
  auto created = [](std::vector<Column> columns) {
    return one(columns + std::vector<Column>{field("SECRET", "value")});
  };
  auto warn_once = [] { std::cerr << "warning: save the secret now; it will not be shown again.\n"; };

  // Project API keys.
  auto keys_path = [&f] { return "/v1/organization/projects" + seg(f.project) + "/api_keys"; };
  const auto detail = kKeyColumns + std::vector<Column>{field("PROJECT", "project_id"), field("OWNER", "owner.id")};
  auto* keys = noun(app, "keys", "API keys of a project (sk-proj-...)");
  auto project_flag = [&f](CLI::App* v) {
    v->add_option("--project", f.project, "Project id (proj_...)")->required();
    return v;
  };

  paging_flags(project_flag(verb(keys, "list", "List a project's API keys",
                                 [&f, keys_path] { server(f).show({"GET", keys_path(), paging(f)}, list_of(kKeyColumns)); })),
               f);
  project_flag(verb(keys, "create", "Create an API key; prints its secret once", [&f, keys_path, detail, created, warn_once] {
    server(f).show({"POST", keys_path(), {}, fields({{"name", f.name}})}, created(detail));
    warn_once();
  }))->add_option("--name", f.name, "A name to recognise it by");
  id_arg(project_flag(verb(keys, "get", "Show an API key",
                           [&f, keys_path, detail] { server(f).show({"GET", keys_path() + seg(f.id)}, one(detail)); })),
         f, "Key id (key_...)");
  id_arg(project_flag(verb(keys, "delete", "Delete an API key; it stops working at once",
                           [&f, keys_path] { server(f).show({"DELETE", keys_path() + seg(f.id)}, deleted()); })),
         f, "Key id (key_...)");

  // Organization admin keys.
  const std::string admin_base = "/v1/organization/admin_api_keys";
  auto* admin = noun(app, "admin-keys", "Admin API keys of the organization (sk-admin-...)");
  paging_flags(verb(admin, "list", "List admin keys",
                    [&f, admin_base] { server(f).show({"GET", admin_base, paging(f)}, list_of(kKeyColumns)); }),
               f);
  verb(admin, "create", "Create an admin key; prints its secret once", [&f, admin_base, created, warn_once] {
    server(f).show({"POST", admin_base, {}, fields({{"name", f.name}})}, created(kKeyColumns));
    warn_once();
  })->add_option("--name", f.name, "A name to recognise it by");
  id_arg(verb(admin, "get", "Show an admin key",
              [&f, admin_base] { server(f).show({"GET", admin_base + seg(f.id)}, one(kKeyColumns)); }),
         f, "Key id (key_...)");
  id_arg(verb(admin, "delete", "Delete an admin key; it stops working at once",
              [&f, admin_base] { server(f).show({"DELETE", admin_base + seg(f.id)}, deleted()); }),
         f, "Key id (key_...)");
}

void add_user_commands(CLI::App& app, Flags& f) {
  const std::string base = "/v1/organization/users";
  const std::string roles = "owner, admin, member, billing or viewer";
  auto* users = noun(app, "users", "People in the organization and their roles");

  paging_flags(verb(users, "list", "List users",
                    [&f, base] { server(f).show({"GET", base, paging(f)}, list_of(kUserColumns)); }),
               f);

  auto* add = verb(users, "add", "Add a user: an existing account by email, or a new one with --password", [&f, base] {
    json body = fields({{"email", f.email}, {"role", f.role}, {"password", f.password}, {"name", f.name}});
    server(f).show({"POST", base, {}, body}, one(kUserColumns));
  });
  add->add_option("--email", f.email, "Their email")->required();
  add->add_option("--role", f.role, "Their role: " + roles + " (default member)");
  add->add_option("--password", f.password, "A password, to create a new account");
  add->add_option("--name", f.name, "Their name, for a new account");

  id_arg(verb(users, "get", "Show a user",
              [&f, base] { server(f).show({"GET", base + seg(f.id)}, one(kUserColumns)); }),
         f, "User id (user-...)");

  auto* set_role = verb(users, "set-role", "Change a user's role", [&f, base] {
    server(f).show({"POST", base + seg(f.id), {}, {{"role", f.role}}}, one(kUserColumns));
  });
  id_arg(set_role, f, "User id (user-...)");
  set_role->add_option("--role", f.role, "The new role: " + roles)->required();

  id_arg(verb(users, "remove", "Remove a user from the organization",
              [&f, base] { server(f).show({"DELETE", base + seg(f.id)}, deleted()); }),
         f, "User id (user-...)");
}

// The audit chain read straight from a data dir's database, without a server.
json verify_offline(const std::string& data_dir) {
  auto path = std::filesystem::path(data_dir) / "aicloud.db";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw CliError("no aicloud database at " + path.string());
  auto store = open_sqlite_store({path.string(), false});
  AuditVerifyResult r = store->read([](Tx& tx) { return audit_verify(tx); });
  return {{"object", "audit.verification"},
          {"ok", r.ok},
          {"records", r.records},
          {"first_broken_seq", r.ok ? json(nullptr) : json(r.first_broken_seq)},
          {"reason", r.ok ? json(nullptr) : json(r.reason)}};
}

void add_audit_commands(CLI::App& app, Flags& f) {
  auto* audit = noun(app, "audit", "The audit log: every change, hash-chained");

  auto* list = verb(audit, "list", "List audit records, newest first", [&f] {
    Api api = server(f);
    bool filtered = !(f.actor + f.action + f.resource + f.since + f.until + f.after).empty();
    if (is_operator_key(api.settings().api_key) && api.settings().org.empty()) {
      // The operator's view of the whole log pages by --limit only.
      if (filtered) throw CliError("the operator's whole audit log takes only --limit; add --org ORG_ID to filter", kExitUsage);
      api.show({"GET", "/admin/v1/audit_logs", {{"limit", f.limit}}}, list_of(kAuditColumns));
      return;
    }
    api.show({"GET",
              "/v1/organization/audit_logs",
              {{"actor_id", f.actor},
               {"action", f.action},
               {"resource_id", f.resource},
               {"effective_at[gte]", f.since},
               {"effective_at[lte]", f.until},
               {"limit", f.limit},
               {"after", f.after}}},
             list_of(kAuditColumns));
  });
  paging_flags(list, f);
  list->add_option("--actor", f.actor, "Only this actor's records (a user or key id)");
  list->add_option("--action", f.action, "Only this action, e.g. project.created");
  list->add_option("--resource", f.resource, "Only records about this object id");
  list->add_option("--since", f.since, "From this unix time (seconds)");
  list->add_option("--until", f.until, "Up to this unix time (seconds)");

  auto* verify = verb(audit, "verify", "Check the audit chain's hashes: via the API (operator key) or --data-dir", [&f] {
    auto print_ok = [](const json& v) {
      if (v.value("ok", false)) std::cout << "OK: the audit chain is intact (" << cell_text(v.value("records", json())) << " records)\n";
    };
    json v;
    if (!f.data_dir.empty()) {
      v = verify_offline(f.data_dir);
      if (json_output(f)) {
        std::cout << v.dump(2) << "\n";
      } else {
        print_ok(v);
      }
    } else {
      v = server(f).show({"GET", "/admin/v1/audit_logs/verify"}, print_ok);
    }
    if (!v.value("ok", false)) {
      throw CliError("the audit chain is broken at record audit_" + cell_text(v.value("first_broken_seq", json())) +
                     ": " + cell_text(v.value("reason", json())) + " (" + cell_text(v.value("records", json())) +
                     " records)");
    }
  });
  verify->add_option("--data-dir", f.data_dir, "Read the server's data dir directly instead of asking the API");
}

void add_settings_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/settings";
  auto print_settings = [](const json& r) {
    json rows = json::array();
    for (const auto& [k, v] : r.items()) {
      if (k != "object") rows.push_back({{"setting", k}, {"value", v}});
    }
    print_table(std::cout, {field("SETTING", "setting"), field("VALUE", "value")}, rows);
  };
  auto* settings = noun(app, "settings", "Cloud-wide settings (operator key)");
  verb(settings, "get", "Show the settings", [&f, base, print_settings] { server(f).show({"GET", base}, print_settings); });
  auto* set = verb(settings, "set", "Change settings", [&f, base, print_settings] {
    json body = json::object();
    if (!f.signup_enabled.empty()) body["signup_enabled"] = f.signup_enabled == "true";
    if (f.session_ttl) body["session_ttl_seconds"] = f.session_ttl;
    if (body.empty()) throw CliError("nothing to set: pass --signup-enabled true|false or --session-ttl SECONDS", kExitUsage);
    server(f).show({"POST", base, {}, body}, print_settings);
  });
  set->add_option("--signup-enabled", f.signup_enabled, "Whether anyone may sign up (true|false)")
      ->check(CLI::IsMember({"true", "false"}));
  set->add_option("--session-ttl", f.session_ttl, "How long a login lasts, in seconds");
}

}  // namespace

void add_commands(CLI::App& app, Flags& f) {
  // Options of the root fall through from every subcommand, so they work after the verb too.
  app.fallthrough();
  app.require_subcommand(1);
  app.add_option("--url", f.global.url, "Server URL (env AICLOUD_URL, else the config file, else http://127.0.0.1:8080)");
  app.add_option("--api-key", f.global.api_key, "API key or session token (env AICLOUD_API_KEY, else the config file)");
  app.add_option("--org", f.global.org, "Act in this organization: OpenAI-Organization (env AICLOUD_ORG)");
  app.add_option("--project", f.global.project,
                 "Act in this project: OpenAI-Project, for compute commands with an admin key or a login "
                 "(env AICLOUD_PROJECT); project keys (sk-proj-...) need none");
  app.add_option("-o,--output", f.output, "Output format: table or json (the server's JSON)")
      ->check(CLI::IsMember({"table", "json"}));

  add_session_commands(app, f);
  add_org_commands(app, f);
  add_project_commands(app, f);
  add_key_commands(app, f);
  add_user_commands(app, f);
  add_audit_commands(app, f);
  add_settings_commands(app, f);
  add_compute_commands(app, f);
  add_capacity_commands(app, f);
}

void group_commands(CLI::App& app) {
  // The help lists the commands by who uses them.
  const std::vector<std::pair<const char*, std::vector<std::string>>> groups = {
      {"Session", {"login", "logout", "whoami"}},
      {"Organizations and access", {"orgs", "projects", "keys", "admin-keys", "users", "audit", "settings"}},
      {"Compute (a project's GPUs)", {"offers", "instances", "jobs", "services", "reservations", "quotas"}},
      {"Models", {"models"}},
      {"Fleet (operator)", {"regions", "zones", "capacity-providers", "join-tokens", "nodes"}}};
  for (CLI::App* sub : app.get_subcommands({})) {
    for (const auto& [group, names] : groups) {
      if (std::find(names.begin(), names.end(), sub->get_name()) != names.end()) sub->group(group);
    }
  }
  // Set last: subcommands made before it would repeat it under each of their own helps.
  app.footer(
      "Examples:\n"
      "  aicloud regions create eu-west-1 --jurisdiction EU          (operator)\n"
      "  aicloud join-tokens create --region eu-west-1 --max-uses 0   (then: aicloud agent --join-token ...)\n"
      "  aicloud offers\n"
      "  aicloud instances create --gpus 2 --gpu-type H100-80GB --region eu-west-1 -- python serve.py\n"
      "  aicloud jobs create --nodes 2 --gpus-per-node 8 --gpu-type H100-80GB --region eu-west-1 -- torchrun train.py\n"
      "  aicloud jobs logs JOB_ID --rank 1 -f\n"
      "  aicloud instances exec INSTANCE_ID -- nvidia-smi\n"
      "\n"
      "Run `aicloud NOUN --help` for a noun's verbs and `aicloud NOUN VERB --help` for a verb's flags.\n"
      "Config file: $AICLOUD_CONFIG or ~/.config/aicloud/config.toml. "
      "`aicloud server`, `aicloud up` and `aicloud agent` run the cloud itself.");
}

}  // namespace aicloud::cli
