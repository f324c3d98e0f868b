// Reservations and quotas: the tenant's side (/v1/compute/reservations, /v1/compute/quotas,
// acting in a project) and the operator's (/admin/v1/reservations, approve and reject;
// /admin/v1/organizations/{org_id}/quotas).
//
// A reservation belongs to its organization (the creating project is recorded): N GPUs of a type
// in a region from start_time to end_time (unix seconds, end exclusive). It is requested as
// pending_approval; the operator approves it (refused when approved reservations would then
// promise more GPUs of that type in that region, at some moment, than the fleet has) or rejects
// it; the organization may cancel it. A quota caps the GPUs that an organization's or a
// project's on-demand and spot workloads hold at once, by GPU type and region or across them.
//
// The scheduler controller (workloads/controller.cpp) reads both each round and hands them to
// the scheduler: this file only keeps the objects.
#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <tuple>

#include "api/app.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/time.h"

namespace aicloud {

namespace {

constexpr int64_t kMaxTime = 253402300799;  // 9999-12-31T23:59:59Z
const std::set<std::string> kStatusFilters = {"pending_approval", "approved", "rejected",
                                              "cancelled", "active", "expired"};

// GPUs of one type on the nodes of a region, any state: what a reservation can ever be given.
int fleet_gpus(Tx& tx, const std::string& region, const std::string& gpu_type) {
  ListQuery q;
  q.kind = "node";
  q.parent_id = region;
  int total = 0;
  for (const auto& n : tx.all(q)) {
    if (n.data["gpu_type"].is_string() && n.data["gpu_type"] == gpu_type) {
      total += int(n.data.value("gpus", json::array()).size());
    }
  }
  return total;
}

int64_t req_int(BodyReader& b, const char* field, int64_t min, int64_t max) {
  auto v = b.opt_int(field, min, max);
  if (!v) {
    throw ApiError(400, "invalid_request_error", std::string("Missing required parameter: '") + field + "'.",
                   "missing_required_parameter", field);
  }
  return *v;
}

bool resv_active(const Object& o, int64_t now) {
  return o.data.value("status", "") == "approved" && o.data.value("start_time", int64_t(0)) <= now &&
         now < o.data.value("end_time", int64_t(0));
}

json reservation_json(const Object& o) {
  int64_t now = now_unix();
  const json& d = o.data;
  return {{"object", "compute.reservation"},
          {"id", o.id},
          {"organization_id", o.org_id},
          {"project_id", o.project_id},
          {"name", d.value("name", o.id)},
          {"gpu_type", d.value("gpu_type", "")},
          {"region", d.value("region", "")},
          {"gpus", d.value("gpus", 0)},
          {"start_time", d.value("start_time", int64_t(0))},
          {"end_time", d.value("end_time", int64_t(0))},
          {"status", d.value("status", "pending_approval")},
          {"active", resv_active(o, now)},
          {"expired", now >= d.value("end_time", int64_t(0))},
          {"created_at", o.created_at},
          {"created_by", d.value("created_by", json(nullptr))},
          {"approved_at", d.value("approved_at", json(nullptr))},
          {"rejected_at", d.value("rejected_at", json(nullptr))},
          {"rejection_reason", d.value("rejection_reason", json(nullptr))},
          {"cancelled_at", d.value("cancelled_at", json(nullptr))}};
}

bool status_matches(const Object& o, const std::string& filter, int64_t now) {
  if (filter.empty()) return true;
  if (filter == "active") return resv_active(o, now);
  if (filter == "expired") return now >= o.data.value("end_time", int64_t(0));
  return o.data.value("status", "") == filter;
}

// A page of reservations (newest first) that pass ?status=, keeping pages exact.
json list_reservations(Context& c, const std::string& org) {
  ListQuery q = list_query(c, "reservation");
  q.org_id = org;
  q.newest_first = true;
  std::string filter(c.target.get("status"));
  if (c.target.has("status") && !kStatusFilters.count(filter)) {
    throw invalid_field("status", "'status' must be one of pending_approval, approved, rejected, cancelled, active, "
                                  "expired.");
  }
  int64_t now = now_unix();
  Page out;
  while (true) {
    Page p = c.tx->list(q);
    for (auto& o : p.items) {
      if (!status_matches(o, filter, now)) continue;
      if (out.items.size() == size_t(q.limit)) {
        out.has_more = true;
        return list_json(out, reservation_json);
      }
      out.items.push_back(std::move(o));
    }
    if (!p.has_more || p.items.empty()) break;
    q.after = p.items.back().id;
  }
  return list_json(out, reservation_json);
}

Object get_reservation(Tx& tx, std::string_view id) {
  auto o = tx.get("reservation", id);
  if (!o) throw not_found("reservation", std::string(id));
  return *o;
}

// The most GPUs that approved reservations of (type, region) other than `self` promise at one
// moment within [start, end), and the ids of those that overlap the interval.
int peak_reserved(Tx& tx, const Object& self, int64_t start, int64_t end, std::vector<std::string>* overlapping) {
  const std::string type = self.data.value("gpu_type", "");
  const std::string region = self.data.value("region", "");
  std::vector<std::pair<int64_t, int>> events;  // (time, +gpus at start / -gpus at end)
  ListQuery q;
  q.kind = "reservation";
  for (const auto& r : tx.all(q)) {
    if (r.id == self.id || r.data.value("status", "") != "approved") continue;
    if (r.data.value("gpu_type", "") != type || r.data.value("region", "") != region) continue;
    int64_t s = std::max(start, r.data.value("start_time", int64_t(0)));
    int64_t e = std::min(end, r.data.value("end_time", int64_t(0)));
    if (s >= e) continue;
    overlapping->push_back(r.id);
    int g = r.data.value("gpus", 0);
    events.emplace_back(s, g);
    events.emplace_back(e, -g);
  }
  // Ends sort before starts at the same moment (end is exclusive).
  std::sort(events.begin(), events.end());
  int cur = 0, peak = 0;
  for (const auto& [t, d] : events) {
    cur += d;
    peak = std::max(peak, cur);
  }
  return peak;
}

// ---- Quotas ------------------------------------------------------------------------------------

std::string quota_lookup(const std::string& org, const std::string& project, const std::string& type,
                         const std::string& region) {
  return org + "/" + project + "/" + type + "/" + region;
}

// GPUs held by an organization's live on-demand and spot workloads, by (project, type, region):
// what quotas count (reserved work is bounded by its reservation instead).
struct Held {
  std::string project, type, region;
  int gpus = 0;
};
std::vector<Held> held_gpus(Tx& tx, const std::string& org) {
  ListQuery aq;
  aq.kind = "assignment";
  aq.org_id = org;
  std::map<std::string, bool> counted;                              // workload -> not reserved
  std::map<std::string, std::pair<std::string, std::string>> nodes;  // node -> type, region
  std::map<std::tuple<std::string, std::string, std::string>, int> by;
  for (const auto& a : tx.all(aq)) {
    std::string ph = a.data.value("phase", "");
    if (ph == "exited" || ph == "lost") continue;
    int g = int(a.data.value("gpus", json::array()).size());
    if (g == 0) continue;
    std::string wid = a.data.value("workload_id", "");
    auto cit = counted.find(wid);
    if (cit == counted.end()) {
      auto w = tx.get("workload", wid);
      bool counts = w && w->data["spec"].value("class", "on_demand") != "reserved";
      cit = counted.emplace(wid, counts).first;
    }
    if (!cit->second) continue;
    auto nit = nodes.find(a.parent_id);
    if (nit == nodes.end()) {
      auto n = tx.get("node", a.parent_id);
      std::string type = n && n->data["gpu_type"].is_string() ? n->data["gpu_type"].get<std::string>() : "";
      nit = nodes.emplace(a.parent_id, std::make_pair(type, n ? n->parent_id : "")).first;
    }
    by[{a.project_id, nit->second.first, nit->second.second}] += g;
  }
  std::vector<Held> out;
  for (const auto& [k, g] : by) out.push_back({std::get<0>(k), std::get<1>(k), std::get<2>(k), g});
  return out;
}

int used_by(const std::vector<Held>& held, const Object& q) {
  std::string type = q.data.value("gpu_type", ""), region = q.data.value("region", "");
  int used = 0;
  for (const auto& h : held) {
    if (!q.project_id.empty() && h.project != q.project_id) continue;
    if (!type.empty() && h.type != type) continue;
    if (!region.empty() && h.region != region) continue;
    used += h.gpus;
  }
  return used;
}

json quota_json(const Object& q) {
  auto opt = [&](const char* k) {
    std::string v = q.data.value(k, "");
    return v.empty() ? json(nullptr) : json(v);
  };
  return {{"object", "compute.quota"},
          {"id", q.id},
          {"organization_id", q.org_id},
          {"project_id", q.project_id.empty() ? json(nullptr) : json(q.project_id)},
          {"gpu_type", opt("gpu_type")},
          {"region", opt("region")},
          {"max_gpus", q.data.value("max_gpus", 0)},
          {"created_at", q.created_at},
          {"updated_at", q.data.value("updated_at", q.created_at)}};
}

json quota_list(Tx& tx, const std::string& org, const std::string& project_only) {
  ListQuery q;
  q.kind = "quota";
  q.org_id = org;
  std::vector<Held> held = held_gpus(tx, org);
  json data = json::array();
  for (const auto& o : tx.all(q)) {
    if (!project_only.empty() && !o.project_id.empty() && o.project_id != project_only) continue;
    json j = quota_json(o);
    j["used_gpus"] = used_by(held, o);
    data.push_back(std::move(j));
  }
  return {{"object", "list"},
          {"data", data},
          {"first_id", data.empty() ? json(nullptr) : data.front()["id"]},
          {"last_id", data.empty() ? json(nullptr) : data.back()["id"]},
          {"has_more", false}};
}

Object get_org(Tx& tx, std::string_view id) {
  auto o = tx.get("organization", id);
  if (!o) throw not_found("organization", std::string(id));
  return *o;
}

}  // namespace

void add_reservation_routes(App& app) {
  // ---- Tenant: reservations of the caller's organization.
  app.add({"POST", "/v1/compute/reservations", Access::kProject, true, "reservation.created", [](Context& c) {
             BodyReader b(c.body);
             std::string gpu_type = b.str("gpu_type", 1, 32);
             std::string region = b.str("region", 1, 63);
             int64_t gpus = req_int(b, "gpus", 1, 1 << 24);
             int64_t start = req_int(b, "start_time", 0, kMaxTime);
             int64_t end = req_int(b, "end_time", 0, kMaxTime);
             auto name = b.opt_str("name", 1, 128);
             b.done();
             if (!c.tx->find("region", region)) throw invalid_field("region", "No such region: '" + region + "'.");
             int fleet = fleet_gpus(*c.tx, region, gpu_type);
             if (fleet == 0) {
               throw invalid_field("gpu_type", "No GPUs of type '" + gpu_type + "' in region '" + region + "'.");
             }
             if (gpus > fleet) {
               throw invalid_field("gpus", "The region '" + region + "' has only " + std::to_string(fleet) +
                                               " GPUs of type '" + gpu_type + "'.");
             }
             if (end <= start) throw invalid_field("end_time", "'end_time' must be after 'start_time'.");
             if (end <= now_unix()) throw invalid_field("end_time", "'end_time' must be in the future.");
             Object o;
             o.kind = "reservation";
             o.id = new_id("resv_");
             o.org_id = c.org_id();
             o.project_id = c.who().project_id;
             o.parent_id = region;
             o.data = {{"name", name.value_or(o.id)}, {"gpu_type", gpu_type}, {"region", region}, {"gpus", gpus},
                       {"start_time", start}, {"end_time", end}, {"status", "pending_approval"},
                       {"created_by", c.who().actor_id}};
             c.tx->insert(o);
             c.audit_resource = o.id;
             c.audit_details = {{"gpus", gpus}, {"gpu_type", gpu_type}, {"region", region}, {"start_time", start},
                                {"end_time", end}};
             c.status = 201;
             return reservation_json(o);
           }});
  app.add({"GET", "/v1/compute/reservations", Access::kProject, false, "",
           [](Context& c) { return list_reservations(c, c.org_id()); }});
  app.add({"GET", "/v1/compute/reservations/{id}", Access::kProject, false, "",
           [](Context& c) { return reservation_json(c.owned("reservation", c.param("id"), "reservation")); }});
  app.add({"POST", "/v1/compute/reservations/{id}/cancel", Access::kProject, true, "reservation.cancelled",
           [](Context& c) {
             Object o = c.owned("reservation", c.param("id"), "reservation");
             BodyReader(c.body).done();
             c.audit_resource = o.id;
             std::string st = o.data.value("status", "");
             if (st == "rejected") {
               throw conflict("Reservation '" + o.id + "' was rejected; there is nothing to cancel.",
                              "reservation_rejected");
             }
             if (st != "cancelled") {
               o.data["status"] = "cancelled";
               o.data["cancelled_at"] = now_unix();
               o.data["cancelled_by"] = c.who().actor_id;
               c.tx->update(o);
             }
             return reservation_json(o);
           }});

  // ---- Tenant: the quotas that apply to the caller's project, with what it holds against each.
  app.add({"GET", "/v1/compute/quotas", Access::kProject, false, "",
           [](Context& c) { return quota_list(*c.tx, c.org_id(), c.who().project_id); }});

  // ---- Operator: every organization's reservations; approve, reject.
  app.add({"GET", "/admin/v1/reservations", Access::kOperator, false, "", [](Context& c) {
             std::string org(c.target.get("organization_id"));
             return list_reservations(c, org);
           }});
  app.add({"POST", "/admin/v1/reservations/{id}/approve", Access::kOperator, true, "reservation.approved",
           [](Context& c) {
             Object o = get_reservation(*c.tx, c.param("id"));
             BodyReader(c.body).done();
             c.audit_resource = o.id;
             c.audit_org = o.org_id;
             std::string st = o.data.value("status", "");
             if (st == "approved") return reservation_json(o);
             if (st != "pending_approval") {
               throw conflict("Reservation '" + o.id + "' is " + st + "; only a pending reservation can be approved.",
                              "reservation_not_pending");
             }
             int64_t start = o.data.value("start_time", int64_t(0)), end = o.data.value("end_time", int64_t(0));
             if (end <= now_unix()) {
               throw conflict("Reservation '" + o.id + "' has already ended.", "reservation_expired");
             }
             std::string type = o.data.value("gpu_type", ""), region = o.data.value("region", "");
             int gpus = o.data.value("gpus", 0);
             int fleet = fleet_gpus(*c.tx, region, type);
             std::vector<std::string> overlapping;
             int peak = peak_reserved(*c.tx, o, start, end, &overlapping);
             if (peak + gpus > fleet) {
               std::string others;
               for (const auto& id : overlapping) others += (others.empty() ? "" : ", ") + id;
               throw conflict("Approving reservation '" + o.id + "' would reserve " + std::to_string(peak + gpus) +
                                  " " + type + " GPUs in " + region + " at once, more than the " +
                                  std::to_string(fleet) + " the fleet has (approved reservations overlapping it: " +
                                  (others.empty() ? "none" : others) + ", " + std::to_string(peak) + " GPUs at their peak).",
                              "reservation_capacity_exceeded");
             }
             o.data["status"] = "approved";
             o.data["approved_at"] = now_unix();
             o.data["approved_by"] = c.who().actor_id;
             c.tx->update(o);
             c.audit_details = {{"gpus", gpus}, {"gpu_type", type}, {"region", region}};
             return reservation_json(o);
           }});
  app.add({"POST", "/admin/v1/reservations/{id}/reject", Access::kOperator, true, "reservation.rejected",
           [](Context& c) {
             Object o = get_reservation(*c.tx, c.param("id"));
             BodyReader b(c.body);
             auto reason = b.opt_str("reason", 0, 1024);
             b.done();
             c.audit_resource = o.id;
             c.audit_org = o.org_id;
             std::string st = o.data.value("status", "");
             if (st == "rejected") return reservation_json(o);
             if (st != "pending_approval") {
               throw conflict("Reservation '" + o.id + "' is " + st + "; only a pending reservation can be rejected.",
                              "reservation_not_pending");
             }
             o.data["status"] = "rejected";
             o.data["rejected_at"] = now_unix();
             o.data["rejection_reason"] = reason ? json(*reason) : json(nullptr);
             c.tx->update(o);
             return reservation_json(o);
           }});

  // ---- Operator: an organization's quotas.
  app.add({"GET", "/admin/v1/organizations/{org_id}/quotas", Access::kOperator, false, "", [](Context& c) {
             Object org = get_org(*c.tx, c.param("org_id"));
             return quota_list(*c.tx, org.id, "");
           }});
  // One quota per (scope, GPU type, region): posting the same again changes its limit.
  app.add({"POST", "/admin/v1/organizations/{org_id}/quotas", Access::kOperator, true, "quota.created",
           [](Context& c) {
             Object org = get_org(*c.tx, c.param("org_id"));
             BodyReader b(c.body);
             int64_t max_gpus = req_int(b, "max_gpus", 0, 1 << 24);
             std::string type = b.opt_str("gpu_type", 1, 32).value_or("");
             std::string region = b.opt_str("region", 1, 63).value_or("");
             std::string project = b.opt_str("project_id", 1, 64).value_or("");
             b.done();
             static const std::regex model_re("^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$");
             if (!type.empty() && !std::regex_match(type, model_re)) {
               throw invalid_field("gpu_type", "'gpu_type' must be a GPU model such as 'H100-80GB'.");
             }
             if (!region.empty() && !c.tx->find("region", region)) {
               throw invalid_field("region", "No such region: '" + region + "'.");
             }
             if (!project.empty()) {
               auto p = c.tx->get("project", project);
               if (!p || p->org_id != org.id) {
                 throw invalid_field("project_id", "No such project in organization '" + org.id + "': '" + project + "'.");
               }
             }
             c.audit_org = org.id;
             std::string lookup = quota_lookup(org.id, project, type, region);
             json out;
             if (auto existing = c.tx->find("quota", lookup)) {
               Object q = *existing;
               q.data["max_gpus"] = max_gpus;
               q.data["updated_at"] = now_unix();
               c.tx->update(q);
               c.audit_action = "quota.updated";
               c.audit_resource = q.id;
               out = quota_json(q);
             } else {
               Object q;
               q.kind = "quota";
               q.id = new_id("quota_");
               q.org_id = org.id;
               q.project_id = project;
               q.lookup = lookup;
               q.data = {{"gpu_type", type}, {"region", region}, {"max_gpus", max_gpus}};
               c.tx->insert(q);
               c.audit_resource = q.id;
               c.status = 201;
               out = quota_json(q);
             }
             c.audit_details = {{"max_gpus", max_gpus}, {"gpu_type", type}, {"region", region}, {"project_id", project}};
             return out;
           }});
  app.add({"DELETE", "/admin/v1/organizations/{org_id}/quotas/{quota_id}", Access::kOperator, true, "quota.deleted",
           [](Context& c) {
             Object org = get_org(*c.tx, c.param("org_id"));
             auto q = c.tx->get("quota", c.param("quota_id"));
             if (!q || q->org_id != org.id) throw not_found("quota", std::string(c.param("quota_id")));
             c.tx->remove("quota", q->id);
             c.audit_org = org.id;
             c.audit_resource = q->id;
             return json{{"object", "compute.quota.deleted"}, {"id", q->id}, {"deleted", true}};
           }});
}

}  // namespace aicloud
