// /healthz (the process is up), /readyz (it can serve: the store answers), /metrics.
#include "api/app.h"
#include "util/error.h"

namespace aicloud {

void add_system_routes(App& app) {
  app.add({"GET", "/healthz", Access::kPublic, false, "", [](Context&) { return json{{"status", "ok"}}; }});
  app.add({"GET", "/readyz", Access::kPublic, false, "", [](Context& c) {
             c.tx->get("settings", "settings");  // throws if the store cannot be read
             return json{{"status", "ready"}};
           }});
  app.add({"GET", "/metrics", Access::kPublic, false, "", [](Context& c) {
             std::string text = c.app.metrics().render(c.app.open_connections());
             text += "# HELP aicloud_auth_cache_entries Credentials held in the authentication cache.\n"
                     "# TYPE aicloud_auth_cache_entries gauge\naicloud_auth_cache_entries " +
                     std::to_string(c.app.auth().cache_size()) + "\n";
             text += "# HELP aicloud_auth_cache_hits_total Authenticated requests answered from the cache.\n"
                     "# TYPE aicloud_auth_cache_hits_total counter\naicloud_auth_cache_hits_total " +
                     std::to_string(c.app.auth().cache_hits()) + "\n";
             text += "# HELP aicloud_auth_cache_misses_total Authentications that read the store (cache miss).\n"
                     "# TYPE aicloud_auth_cache_misses_total counter\naicloud_auth_cache_misses_total " +
                     std::to_string(c.app.auth().cache_misses()) + "\n";
             text += c.app.metrics_text();
             c.raw_body = std::move(text);
             c.content_type = "text/plain; version=0.0.4";
             return json();
           }});
}

}  // namespace aicloud
