// The API application: routes and the filter chain every request passes through.
//
//   request id -> target parse -> route match (404/405) -> authenticate (cache) -> content type
//   -> body parse -> transaction [idempotency check -> handler -> audit append -> idempotency
//   record] -> commit -> auth cache invalidation -> metrics + access log
//
// A mutation, its audit record and its idempotency record commit in one transaction.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "api/context.h"
#include "http/metrics.h"
#include "http/router.h"
#include "http/server.h"
#include "identity/auth.h"
#include "store/store.h"

namespace aicloud {

using RouteHandler = std::function<json(Context&)>;

struct RouteSpec {
  std::string method, pattern;
  Access access;
  bool mutation;         // runs in a write transaction, audited, honours Idempotency-Key
  std::string action;    // audit action, e.g. "project.created"
  RouteHandler handler;
  // Instead of handler, for routes that answer with their own response (the gateway: a proxied
  // body, possibly streamed through http::ResponseStream). Runs after authentication,
  // outside any transaction; never a `mutation`. It checks its own Content-Type.
  std::function<http::Response(Context&)> raw = nullptr;
  // Runs after authentication, before the route's transaction begins (the usage routes: fold
  // the meter's journal, so that the read sees every request that completed).
  std::function<void()> before = nullptr;
};

class App : public http::Handler {
 public:
  explicit App(Store& store);

  void add(RouteSpec spec);
  // Builds the metrics registry; call once after all routes are added.
  void finalize();

  http::Response handle(http::Request& req, const std::string& remote_addr) override;
  http::Response protocol_error(unsigned status, const std::string& message) override;

  Store& store() { return store_; }
  AuthService& auth() { return auth_; }
  http::Metrics& metrics() { return *metrics_; }
  void set_connection_gauge(std::function<int64_t()> f) { open_connections_ = std::move(f); }
  int64_t open_connections() const { return open_connections_ ? open_connections_() : 0; }
  // More Prometheus text for /metrics, from parts the App does not know (the meter).
  void add_metrics_text(std::function<std::string()> f) { metrics_text_.push_back(std::move(f)); }
  std::string metrics_text() const {
    std::string out;
    for (const auto& f : metrics_text_) out += f();
    return out;
  }

 private:
  http::Response run(Context& c, const RouteSpec& spec);
  void audit_failure(Context& c, const RouteSpec& spec, int status);
  void resolve_project(Context& c);

  Store& store_;
  AuthService auth_;
  http::Router router_;
  std::vector<RouteSpec> routes_;
  std::unique_ptr<http::Metrics> metrics_;
  std::function<int64_t()> open_connections_;
  std::vector<std::function<std::string()>> metrics_text_;
};

// Route modules.
void add_system_routes(App& app);
void add_auth_routes(App& app);
void add_admin_routes(App& app);
void add_org_routes(App& app);
class NodeLeases;
void add_capacity_routes(App& app, NodeLeases& leases);
void add_compute_routes(App& app, NodeLeases& leases);
void add_reservation_routes(App& app);
void add_rate_limit_routes(App& app);  // api/rate_limit_routes.cpp: projects' model rate limits
class Meter;
void add_usage_routes(App& app, Meter& meter);  // metering/usage_routes.cpp: the usage API
void add_model_routes(App& app, const std::string& data_dir);  // the model registry (files in DATA_DIR/models)

// The settings object, created with defaults on first read.
json read_settings(Tx& tx);

}  // namespace aicloud
