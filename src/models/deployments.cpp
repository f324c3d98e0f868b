#include "models/deployments.h"

#include <algorithm>

#include "api/app.h"
#include "gateway/endpoints.h"
#include "models/registry.h"
#include "util/error.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/thread_name.h"
#include "util/time.h"
#include "workloads/workloads.h"

namespace aicloud {

namespace {

constexpr const char* kEngineKeyEnv = "LLAMA_API_KEY";  // llama-server reads its --api-key from it

json deployment_json_impl(const Object& d) {
  return {{"object", "deployment"},
          {"id", d.id},
          {"name", d.data.value("name", d.id)},
          {"project_id", d.project_id},
          {"created_at", d.created_at},
          {"generation", d.data.value("generation", 1)},
          {"spec", d.data.value("spec", json::object())},
          {"status", d.data.value("status", json::object())}};
}

// Reads the tunable part of a spec (create and update share it). `spec` holds the current values.
void read_policy(BodyReader& b, json& spec, bool creating) {
  if (const json* ea = b.opt_object("engine_args")) {
    BodyReader e(*ea, "engine_args.");
    if (auto v = e.opt_int("context_size", 128, 1 << 20)) spec["engine_args"]["context_size"] = *v;
    if (auto v = e.opt_int("parallel", 1, 256)) spec["engine_args"]["parallel"] = *v;
    if (auto v = e.opt_bool("embeddings")) spec["engine_args"]["embeddings"] = *v;
    e.done();
  }
  if (const json* r = b.opt_object("resources")) {
    BodyReader e(*r, "resources.");
    if (auto v = e.opt_str("gpu_type", 1, 32)) spec["resources"]["gpu_type"] = *v;
    if (auto v = e.opt_int("gpus", 1, 64)) spec["resources"]["gpus"] = *v;
    e.done();
  }
  if (auto v = b.opt_int("min_replicas", 0, 100)) spec["min_replicas"] = *v;
  if (auto v = b.opt_int("max_replicas", 1, 100)) spec["max_replicas"] = *v;
  if (const json* a = b.opt_object("autoscale")) {
    BodyReader e(*a, "autoscale.");
    if (auto v = e.opt_int("target_inflight", 1, 10000)) spec["autoscale"]["target_inflight"] = *v;
    e.done();
  }
  if (auto v = b.opt_int("scale_to_zero_after_seconds", 10, 7 * 86400)) spec["scale_to_zero_after_seconds"] = *v;
  if (creating) {
    json defaults = {{"engine_args", {{"context_size", 2048}, {"parallel", 2}, {"embeddings", false}}},
                     {"resources", {{"gpus", 1}}},
                     {"min_replicas", 1},
                     {"scale_to_zero_after_seconds", 300}};
    for (auto& [k, v] : defaults.items()) {
      if (!spec.contains(k)) spec[k] = v;
      else if (v.is_object()) {
        for (auto& [k2, v2] : v.items()) {
          if (!spec[k].contains(k2)) spec[k][k2] = v2;
        }
      }
    }
    if (!spec.contains("max_replicas")) spec["max_replicas"] = std::max<int64_t>(1, spec["min_replicas"].get<int64_t>());
    if (!spec.contains("autoscale")) spec["autoscale"] = {{"target_inflight", spec["engine_args"]["parallel"]}};
  }
  if (spec["max_replicas"].get<int64_t>() < spec["min_replicas"].get<int64_t>()) {
    throw invalid_field("max_replicas", "'max_replicas' must be at least 'min_replicas'.");
  }
}

void check_resources(Tx& tx, const json& spec) {
  std::string region = spec["region"];
  if (!tx.find("region", region)) throw invalid_field("region", "No such region: '" + region + "'.");
  if (!spec["resources"].contains("gpu_type")) {
    throw ApiError(400, "invalid_request_error", "Missing required parameter: 'resources.gpu_type' (e.g. 'H100-80GB').",
                   "missing_required_parameter", "resources.gpu_type");
  }
  std::string type = spec["resources"]["gpu_type"];
  int64_t gpus = spec["resources"]["gpus"];
  ListQuery q;
  q.kind = "node";
  q.parent_id = region;
  int64_t most = 0;
  for (const auto& n : tx.all(q)) {
    if (n.data["gpu_type"].is_string() && n.data["gpu_type"] == type) {
      most = std::max<int64_t>(most, int64_t(n.data.value("gpus", json::array()).size()));
    }
  }
  if (most == 0) throw invalid_field("resources.gpu_type", "No GPUs of type '" + type + "' in region '" + region + "'.");
  if (gpus > most) {
    throw invalid_field("resources.gpus", "No node in region '" + region + "' has " + std::to_string(gpus) + " GPUs of type '" +
                                              type + "' (the largest has " + std::to_string(most) + ").");
  }
}

Object owned_deployment(Context& c) {
  auto d = c.tx->get("deployment", c.param("id"));
  if (!d || d->project_id != c.who().project_id || d->data.contains("deleted_at")) {
    throw not_found("deployment", std::string(c.param("id")));
  }
  return *d;
}

// Settings that change the replicas' process (a rollout) rather than just their number.
bool changes_process(const json& a, const json& b) {
  return a["engine_args"] != b["engine_args"] || a["resources"] != b["resources"] || a["model_id"] != b["model_id"];
}

bool live(const Object& w) {
  std::string ph = w.data["status"].value("phase", "pending");
  return !workload_terminal(ph) && ph != "stopping" && ph != "cancelling";
}

}  // namespace

json deployment_json(const Object& d) { return deployment_json_impl(d); }

void add_deployment_routes(App& app) {
  app.add({"POST", "/v1/deployments", Access::kProject, true, "deployment.created", [](Context& c) {
             BodyReader b(c.body);
             std::string model = b.str("model", 1, 128);
             std::string name = b.opt_str("name", 1, 128).value_or("");
             std::string region = b.str("region", 1, 63);
             json spec = {{"model", model}, {"region", region}};
             read_policy(b, spec, true);
             b.done();
             auto m = models::find_model(*c.tx, c.who().org_id, model);
             if (!m) {
               throw ApiError(400, "invalid_request_error",
                              "The model '" + model + "' does not exist or you do not have access to it.",
                              "model_not_found", "model");
             }
             if (spec["engine_args"]["embeddings"].get<bool>() && !m->has_capability("embeddings")) {
               // An embeddings endpoint on a chat model is allowed (llama.cpp pools its states).
             }
             spec["model_id"] = m->registry_id;
             spec["model_sha256"] = m->sha256;
             check_resources(*c.tx, spec);
             Object d;
             d.kind = "deployment";
             d.id = new_id("dep_");
             d.org_id = c.who().org_id;
             d.project_id = c.who().project_id;
             d.data = {{"name", name.empty() ? d.id : name},
                       {"spec", spec},
                       {"generation", 1},
                       {"engine_key", "sk-engine-" + random_base62(40)},
                       {"status", {{"phase", "deploying"}, {"replicas", 0}, {"ready_replicas", 0}, {"updated_replicas", 0}}}};
             c.tx->insert(d);
             c.audit_resource = d.id;
             c.audit_details = {{"model", model}};
             c.status = 201;
             return deployment_json(d);
           }});
  app.add({"GET", "/v1/deployments", Access::kProject, false, "", [](Context& c) {
             ListQuery q = list_query(c, "deployment");
             q.project_id = c.who().project_id;
             Page p = c.tx->list(q);
             std::erase_if(p.items, [](const Object& o) { return o.data.contains("deleted_at"); });
             return list_json(p, deployment_json);
           }});
  app.add({"GET", "/v1/deployments/{id}", Access::kProject, false, "",
           [](Context& c) { return deployment_json(owned_deployment(c)); }});
  app.add({"POST", "/v1/deployments/{id}", Access::kProject, true, "deployment.updated", [](Context& c) {
             Object d = owned_deployment(c);
             BodyReader b(c.body);
             json spec = d.data["spec"];
             json before = spec;
             read_policy(b, spec, false);
             b.done();
             check_resources(*c.tx, spec);
             if (changes_process(before, spec)) d.data["generation"] = d.data.value("generation", 1) + 1;
             d.data["spec"] = spec;
             c.tx->update(d);
             c.audit_resource = d.id;
             return deployment_json(d);
           }});
  app.add({"DELETE", "/v1/deployments/{id}", Access::kProject, true, "deployment.deleted", [](Context& c) {
             Object d = owned_deployment(c);
             d.data["deleted_at"] = now_unix();
             d.data["status"]["phase"] = "deleting";
             c.tx->update(d);  // the controller stops its replicas
             c.audit_resource = d.id;
             return json{{"id", d.id}, {"object", "deployment.deleted"}, {"deleted", true}};
           }});
}

// ---- the controller ----

DeploymentController::DeploymentController(Store& store, gateway::ReplicaDirectory& dir, DeploymentControllerOptions opts)
    : store_(store), dir_(dir), opts_(opts) {
  dir_.on_wake([this](const std::string& id) {
    {
      std::lock_guard lk(mu_);
      woken_.insert(id);
    }
    cv_.notify_all();
  });
}

DeploymentController::~DeploymentController() { stop(); }

void DeploymentController::start() {
  thread_ = std::thread([this] {
    name_this_thread("deployments");
    std::unique_lock lk(mu_);
    while (!stopping_) {
      lk.unlock();
      try {
        round();
      } catch (const std::exception& e) {
        spdlog::error("deployment round failed: {}", e.what());
      }
      lk.lock();
      cv_.wait_for(lk, std::chrono::milliseconds(opts_.round_ms), [this] { return stopping_ || !woken_.empty(); });
    }
  });
}

void DeploymentController::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  dir_.on_wake(nullptr);
}

namespace {

Object new_replica(const Object& d, int generation) {
  const json& spec = d.data["spec"];
  const json& ea = spec["engine_args"];
  json command = {"{engine:llama-server}",
                  "-m",
                  "{model:" + spec["model_id"].get<std::string>() + ":" + spec["model_sha256"].get<std::string>() + "}",
                  "--host",
                  "0.0.0.0",
                  "--port",
                  "{port}",
                  "--alias",
                  spec["model"],
                  "-c",
                  std::to_string(ea["context_size"].get<int64_t>()),
                  "-np",
                  std::to_string(ea["parallel"].get<int64_t>())};
  command.push_back("--no-ui");  // the engine's web UI is not built; the gateway is the way in
  if (ea.value("embeddings", false)) {
    command.push_back("--embeddings");
    command.push_back("--pooling");
    command.push_back("mean");
  }
  Object w;
  w.kind = "workload";
  w.id = new_id("svc_");
  w.org_id = d.org_id;
  w.project_id = d.project_id;
  json ws = {{"region", spec["region"]}, {"zone", nullptr}, {"class", "on_demand"}, {"priority", 0}, {"nodes", 1},
             {"gpus_per_node", spec["resources"]["gpus"]}, {"gpu_type", spec["resources"]["gpu_type"]},
             {"command", command}, {"env", {{kEngineKeyEnv, d.data["engine_key"]}}},
             {"secret_env", {kEngineKeyEnv}}, {"memory_bytes", 0}, {"max_retries", 0},
             {"port", 0},  // allocated on the node at placement
             {"health_check", {{"path", "/health"}, {"interval_seconds", 1}, {"timeout_seconds", 2},
                               {"failure_threshold", 3}, {"startup_timeout_seconds", 600}}},
             {"deployment_id", d.id}, {"generation", generation}};
  w.data = {{"type", "service"}, {"name", d.data.value("name", d.id) + "-replica"}, {"spec", ws},
            {"status", {{"phase", "pending"}, {"reason", "waiting for the scheduler"}, {"attempts", 0}}}};
  return w;
}

void stop_replica(Tx& tx, Object& w, const std::string& why) {
  json& st = w.data["status"];
  std::string ph = st.value("phase", "pending");
  bool placed = ph != "pending";
  st["phase"] = placed ? "stopping" : "stopped";
  if (!placed) st["finished_at"] = now_unix();
  st["reason"] = why;
  tx.update(w);
  if (placed) stop_assignments(tx, w, 10'000);
  reconcile_workload(tx, w);
}

}  // namespace

void DeploymentController::round() {
  int64_t now = now_ms();
  std::set<std::string> woken;
  {
    std::lock_guard lk(mu_);
    woken.swap(woken_);
  }
  auto inflight = dir_.outstanding_by_deployment();
  std::vector<gateway::Deployment> publish;
  std::vector<std::string> unpublish;

  store_.write([&](Tx& tx) {
    ListQuery wq;
    wq.kind = "workload";
    std::map<std::string, std::vector<Object>> replicas;
    for (auto& w : tx.all(wq)) {
      const json& s = w.data["spec"];
      if (s.contains("deployment_id") && live(w)) replicas[s["deployment_id"].get<std::string>()].push_back(std::move(w));
    }
    ListQuery dq;
    dq.kind = "deployment";
    for (auto& d : tx.all(dq)) {
      auto& mine = replicas[d.id];
      if (d.data.contains("deleted_at")) {
        for (auto& w : mine) stop_replica(tx, w, "deployment deleted");
        unpublish.push_back(d.id);
        if (d.data["status"].value("phase", "") != "deleted") {
          d.data["status"] = {{"phase", "deleted"}, {"replicas", 0}, {"ready_replicas", 0}};
          tx.update(d);
        }
        continue;
      }
      const json& spec = d.data["spec"];
      int gen = d.data.value("generation", 1);
      int64_t min_r = spec.value("min_replicas", int64_t(1)), max_r = spec.value("max_replicas", int64_t(1));
      int64_t target = std::max<int64_t>(1, spec["autoscale"].value("target_inflight", int64_t(1)));
      int load = inflight.count(d.id) ? inflight[d.id] : 0;
      if (load > 0 || !last_busy_.count(d.id)) last_busy_[d.id] = now;

      // Desired count: the autoscaler, bounded; zero only after the idle period.
      int64_t desired = std::clamp<int64_t>((load + target - 1) / target, min_r, max_r);
      int64_t current = int64_t(mine.size());
      if (desired == 0 && current > 0) {
        int64_t idle_ms = spec.value("scale_to_zero_after_seconds", int64_t(300)) * 1000;
        if (now - last_busy_[d.id] < idle_ms) desired = current;  // not idle long enough yet
      }
      if (woken.count(d.id)) {
        desired = std::max<int64_t>(desired, 1);
        last_busy_[d.id] = now;
      }
      // Scaling down by load: only one step per round and never below what is busy.
      if (desired < current && desired > 0) desired = current - 1;

      std::vector<Object*> fresh, old;
      for (auto& w : mine) (w.data["spec"].value("generation", 1) == gen ? fresh : old).push_back(&w);
      auto ready = [](const Object* w) { return w->data["status"].value("ready", false); };
      int64_t fresh_ready = std::count_if(fresh.begin(), fresh.end(), ready);

      // Rollout: one new replica at a time while old ones remain; an old one goes once every new
      // one is ready.
      int64_t want_fresh = desired;
      if (!old.empty() && desired > 0) {
        want_fresh = std::min<int64_t>(desired, int64_t(fresh.size()) + (fresh_ready == int64_t(fresh.size()) ? 1 : 0));
        if (fresh_ready > 0 && fresh_ready == int64_t(fresh.size())) {
          stop_replica(tx, *old.front(), "replaced by generation " + std::to_string(gen));
          old.erase(old.begin());
        }
      }
      if (desired == 0) {
        for (auto* w : old) stop_replica(tx, *w, "scaled to zero");
        old.clear();
      }
      for (int64_t n = int64_t(fresh.size()); n < want_fresh; ++n) {
        Object w = new_replica(d, gen);
        tx.insert(w);
      }
      // Too many: stop those not ready first, newest first.
      std::stable_sort(fresh.begin(), fresh.end(), [&](const Object* a, const Object* b) {
        if (ready(a) != ready(b)) return !ready(a);
        return a->seq > b->seq;
      });
      for (int64_t n = int64_t(fresh.size()), i = 0; n > std::max<int64_t>(want_fresh, 0); --n, ++i) {
        stop_replica(tx, *fresh[size_t(i)], desired == 0 ? "scaled to zero" : "scaled down");
        fresh[size_t(i)] = nullptr;
      }

      // What the gateway may use: ready replicas of any generation still running.
      gateway::Deployment g;
      g.id = d.id;
      g.model = spec["model"];
      g.owner_org = d.org_id;
      g.scale_to_zero = min_r == 0;
      int64_t ready_n = 0, updated = 0, total = 0;
      for (auto* list : {&fresh, &old}) {
        for (Object* w : *list) {
          if (!w) continue;
          ++total;
          if (w->data["spec"].value("generation", 1) == gen) ++updated;
          const json& st = w->data["status"];
          if (!st.value("ready", false) || !st["endpoint"].is_string()) continue;
          std::string ep = st["endpoint"];
          size_t colon = ep.rfind(':');
          if (colon == std::string::npos) continue;
          gateway::Replica r;
          r.id = w->id;
          r.host = ep.substr(0, colon);
          r.port = uint16_t(std::stoi(ep.substr(colon + 1)));
          r.api_key = d.data["engine_key"];
          r.region = spec["region"];
          g.replicas.push_back(std::move(r));
          ++ready_n;
        }
      }
      publish.push_back(std::move(g));
      json st = {{"phase", ready_n > 0 ? "ready" : desired == 0 ? "scaled_to_zero" : "deploying"},
                 {"replicas", desired}, {"ready_replicas", ready_n}, {"updated_replicas", updated},
                 {"running_replicas", total}, {"in_flight", load}};
      if (d.data["status"] != st) {
        d.data["status"] = st;
        tx.update(d);
      }
    }
    // The operator's external endpoints are served the same way (one replica each).
    std::set<std::string> endpoints;
    for (auto& g : gateway::endpoint_deployments(tx)) {
      endpoints.insert(g.id);
      publish.push_back(std::move(g));
    }
    for (const auto& id : published_endpoints_) {
      if (!endpoints.count(id)) unpublish.push_back(id);
    }
    published_endpoints_ = std::move(endpoints);
  });
  for (auto& g : publish) dir_.set(std::move(g));
  for (auto& id : unpublish) dir_.remove(id);
}

}  // namespace aicloud
