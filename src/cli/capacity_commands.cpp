// The operator's fleet (/admin/v1): regions, zones, capacity providers, join tokens and nodes.
#include <CLI/CLI.hpp>

#include <iostream>

#include "cli/command_kit.h"
#include "cli/commands.h"
#include "cli/errors.h"

namespace aicloud::cli {
namespace {

const std::vector<Column> kRegionColumns = {field("ID", "id"), field("NAME", "name"),
                                            field("JURISDICTION", "jurisdiction"), time_field("CREATED", "created_at")};
const std::vector<Column> kZoneColumns = {field("ID", "id"), field("REGION", "region"), field("NAME", "name"),
                                          field("POWER BUDGET (kW)", "power_budget_kw"),
                                          time_field("CREATED", "created_at")};

Column cost_column() {
  return {"COST/GPU-HOUR", [](const json& o) {
            const json& c = o.value("cost_per_gpu_hour_micros", json());
            return c.is_number_integer() ? format_micros(c.get<int64_t>()) : std::string("-");
          }};
}
const std::vector<Column> kProviderColumns = {field("ID", "id"),
                                              field("NAME", "name"),
                                              field("TYPE", "type"),
                                              field("UPSTREAM", "upstream"),
                                              cost_column(),
                                              time_field("TERM START", "term_start"),
                                              time_field("TERM END", "term_end"),
                                              time_field("CREATED", "created_at")};

// "2/5" uses of a token; max_uses 0 is unlimited.
Column uses_column() {
  return {"USES", [](const json& t) {
            std::string used = cell_text(t.value("uses", json(0)));
            const json& max = t.value("max_uses", json(1));
            return used + "/" + (max.is_number() && max.get<int64_t>() == 0 ? std::string("unlimited") : cell_text(max));
          }};
}
const std::vector<Column> kTokenColumns = {field("ID", "id"),         field("REGION", "region"),
                                           field("ZONE", "zone"),     uses_column(),
                                           field("STATUS", "status"), time_field("EXPIRES", "expires_at"),
                                           field("TOKEN", "redacted_value"), field("DESCRIPTION", "description")};

// "8x H100-80GB", from a node's GPU list.
Column node_gpus_column() {
  return {"GPUS", [](const json& n) {
            size_t count = n.value("gpus", json::array()).size();
            if (count == 0) return std::string("0");
            return std::to_string(count) + "x " + cell_text(n.value("gpu_type", json()));
          }};
}
const std::vector<Column> kNodeColumns = {field("ID", "id"),
                                          field("NAME", "name"),
                                          field("REGION", "region"),
                                          field("ZONE", "zone"),
                                          field("NVLINK DOMAIN", "nvlink_domain"),
                                          node_gpus_column(),
                                          field("STATE", "state"),
                                          time_field("LAST HEARTBEAT", "last_heartbeat_at")};

std::string bytes_text(const json& v) {
  if (!v.is_number_integer()) return cell_text(v);
  double gib = double(v.get<int64_t>()) / double(1 << 30);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", gib);
  return buf;
}

void print_node(const json& n) {
  auto detail = kNodeColumns + std::vector<Column>{
                                   field("CPU CORES", "cpu_cores"),
                                   {"MEMORY", [](const json& o) { return bytes_text(o.value("memory_bytes", json())); }},
                                   field("ADDRESS", "address"),
                                   field("AGENT VERSION", "agent_version"),
                                   field("LABELS", "labels"),
                                   field("TAINTS", "taints"),
                                   time_field("JOINED", "created_at")};
  print_object(std::cout, detail, n);
  const json& gpus = n.value("gpus", json::array());
  if (!gpus.empty()) {
    std::cout << "\n";
    print_table(std::cout,
                {field("GPU", "index"), field("MODEL", "model"), field("MEMORY (MB)", "memory_mb"), field("UUID", "uuid")},
                gpus);
  }
}

void add_region_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/regions";
  auto* regions = noun(app, "regions", "Regions and their jurisdiction (operator key)");
  auto* create = verb(regions, "create", "Create a region", [&f, base] {
    json body = fields({{"id", f.id}, {"name", f.name}, {"jurisdiction", f.jurisdiction}});
    server(f).show({"POST", base, {}, body}, one(kRegionColumns));
  });
  id_arg(create, f, "Its id: lower-case letters, digits and dashes, such as eu-west-1");
  create->add_option("--jurisdiction", f.jurisdiction, "Whose law applies to data there: EU, US, JP, IN, ...")
      ->required();
  create->add_option("--name", f.name, "A display name (default: the id)");
  paging_flags(verb(regions, "list", "List regions",
                    [&f, base] { server(f).show({"GET", base, paging(f)}, list_of(kRegionColumns)); }),
               f);
  id_arg(verb(regions, "get", "Show a region",
              [&f, base] { server(f).show({"GET", base + seg(f.id)}, one(kRegionColumns)); }),
         f, "Region id (e.g. eu-west-1)");
}

void add_zone_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/zones";
  auto* zones = noun(app, "zones", "Zones (data centres) of a region, with their power budget (operator key)");
  auto* create = verb(zones, "create", "Create a zone in a region", [&f, base] {
    json body = fields({{"id", f.id}, {"region", f.region}, {"name", f.name}});
    put_int(body, "power_budget_kw", f.power_budget_kw);
    server(f).show({"POST", base, {}, body}, one(kZoneColumns));
  });
  id_arg(create, f, "Its id, such as eu-west-1a");
  create->add_option("--region", f.region, "The region it is in")->required();
  create->add_option("--name", f.name, "A display name (default: the id)");
  create->add_option("--power-budget-kw", f.power_budget_kw, "Its power budget in kW (0: none)");
  auto* list = verb(zones, "list", "List zones", [&f, base] {
    auto q = paging(f);
    q.emplace_back("region", f.region);
    server(f).show({"GET", base, q}, list_of(kZoneColumns));
  });
  paging_flags(list, f);
  list->add_option("--region", f.region, "Only this region's zones");
  id_arg(verb(zones, "get", "Show a zone", [&f, base] { server(f).show({"GET", base + seg(f.id)}, one(kZoneColumns)); }),
         f, "Zone id (e.g. eu-west-1a)");
}

void add_provider_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/capacity_providers";
  auto* providers = noun(app, "capacity-providers",
                         "Where capacity comes from: owned, or leased from an upstream cloud (operator key)");
  auto* create = verb(providers, "create", "Record a capacity provider", [&f, base] {
    json body = fields({{"name", f.name}, {"type", f.provider_type}, {"upstream", f.upstream}});
    if (!f.cost.empty()) body["cost_per_gpu_hour_micros"] = parse_micros("--cost-per-gpu-hour", f.cost);
    if (!f.term_start.empty()) body["term_start"] = parse_time("--term-start", f.term_start);
    if (!f.term_end.empty()) body["term_end"] = parse_time("--term-end", f.term_end);
    server(f).show({"POST", base, {}, body}, one(kProviderColumns));
  });
  create->add_option("--name", f.name, "Its name")->required();
  create->add_option("--type", f.provider_type, "owned (default) or leased")->check(CLI::IsMember({"owned", "leased"}));
  create->add_option("--upstream", f.upstream, "The upstream cloud a lease is from");
  create->add_option("--cost-per-gpu-hour", f.cost, "What a leased GPU-hour costs, in dollars (e.g. 2.35)");
  create->add_option("--term-start", f.term_start, "When the lease starts (2027-01-01, or unix seconds)");
  create->add_option("--term-end", f.term_end, "When the lease ends (2030-01-01, or unix seconds)");
  paging_flags(verb(providers, "list", "List capacity providers",
                    [&f, base] { server(f).show({"GET", base, paging(f)}, list_of(kProviderColumns)); }),
               f);
}

void add_join_token_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/join_tokens";
  auto* tokens = noun(app, "join-tokens", "Tokens with which node agents join the fleet (operator key)");
  auto* create = verb(tokens, "create", "Create a join token; prints its secret once", [&f, base] {
    json body = fields({{"region", f.region}, {"zone", f.zone}, {"description", f.description}});
    put_int(body, "max_uses", f.max_uses);
    if (!f.expires_in.empty()) body["expires_in_seconds"] = parse_duration("--expires-in", f.expires_in);
    Api api = server(f);
    std::string url = api.settings().url;
    api.show({"POST", base, {}, body}, [](const json& r) {
      print_object(std::cout, kTokenColumns + std::vector<Column>{field("SECRET", "token")}, r);
    });
    std::cerr << "warning: save the secret now; it will not be shown again.\n"
              << "Join a node with: aicloud agent --server " << url
              << " --join-token SECRET --work-dir /var/lib/aicloud-agent\n";
  });
  create->add_option("--region", f.region, "Nodes that join with it are in this region");
  create->add_option("--zone", f.zone, "... and in this zone");
  create->add_option("--max-uses", f.max_uses, "How many nodes may join with it (default 1; 0: unlimited)");
  create->add_option("--expires-in", f.expires_in, "How long it stays valid: 3600, 12h, 7d (default 1 day, at most 30d)");
  create->add_option("--description", f.description, "A note to recognise it by");
  paging_flags(verb(tokens, "list", "List join tokens (secrets redacted)",
                    [&f, base] { server(f).show({"GET", base, paging(f)}, list_of(kTokenColumns)); }),
               f);
  id_arg(verb(tokens, "revoke", "Revoke a join token; nodes that joined with it stay",
              [&f, base] { server(f).show({"DELETE", base + seg(f.id)}, one(kTokenColumns)); }),
         f, "Join token id (jt_...)");
}

void add_node_commands(CLI::App& app, Flags& f) {
  const std::string base = "/admin/v1/nodes";
  auto* nodes = noun(app, "nodes", "The fleet's GPU nodes: state, cordon, drain (operator key)");
  auto* list = verb(nodes, "list", "List nodes", [&f, base] {
    auto q = paging(f);
    q.emplace_back("region", f.region);
    server(f).show({"GET", base, q}, list_of(kNodeColumns));
  });
  paging_flags(list, f);
  list->add_option("--region", f.region, "Only this region's nodes");
  id_arg(verb(nodes, "get", "Show a node and its GPUs",
              [&f, base] { server(f).show({"GET", base + seg(f.id)}, print_node); }),
         f, "Node id (node_...)");
  for (const auto& [name, help] : std::vector<std::pair<std::string, std::string>>{
           {"cordon", "Cordon a node: no new placements; what runs there stays"},
           {"uncordon", "Make a cordoned or draining node schedulable again"},
           {"drain", "Drain a node: no new placements; its workloads move or stop per policy"}}) {
    id_arg(verb(nodes, name, help,
                [&f, base, name = name] {
                  server(f).show({"POST", base + seg(f.id) + "/" + name, {}, json::object()}, one(kNodeColumns));
                }),
           f, "Node id (node_...)");
  }
}

}  // namespace

void add_capacity_commands(CLI::App& app, Flags& f) {
  add_region_commands(app, f);
  add_zone_commands(app, f);
  add_provider_commands(app, f);
  add_join_token_commands(app, f);
  add_node_commands(app, f);
}

}  // namespace aicloud::cli
