#include "http/metrics.h"

#include <sstream>

namespace aicloud::http {

Metrics::Metrics(std::vector<std::string> route_names, std::vector<std::string> route_methods)
    : names_(std::move(route_names)), methods_(std::move(route_methods)) {
  names_.push_back("unmatched");
  methods_.push_back("");
  routes_ = std::make_unique<PerRoute[]>(names_.size());
}

void Metrics::record(int route, unsigned status, int64_t latency_us) {
  size_t i = route < 0 || size_t(route) >= names_.size() - 1 ? names_.size() - 1 : size_t(route);
  PerRoute& r = routes_[i];
  double s = double(latency_us) / 1e6;
  size_t b = 0;
  while (b < kBuckets.size() && s > kBuckets[b]) ++b;
  r.buckets[b].fetch_add(1, std::memory_order_relaxed);
  r.sum_us.fetch_add(uint64_t(latency_us < 0 ? 0 : latency_us), std::memory_order_relaxed);
  r.count.fetch_add(1, std::memory_order_relaxed);
  r.by_status[status < 600 ? status : 599].fetch_add(1, std::memory_order_relaxed);
}

std::string Metrics::render(int64_t open_connections) const {
  std::ostringstream o;
  o << "# HELP aicloud_http_requests_total HTTP requests by route, method and status.\n"
    << "# TYPE aicloud_http_requests_total counter\n";
  for (size_t i = 0; i < names_.size(); ++i) {
    for (unsigned st = 100; st < 600; ++st) {
      uint64_t n = routes_[i].by_status[st].load(std::memory_order_relaxed);
      if (n) {
        o << "aicloud_http_requests_total{route=\"" << names_[i] << "\",method=\"" << methods_[i] << "\",status=\""
          << st << "\"} " << n << "\n";
      }
    }
  }
  o << "# HELP aicloud_http_request_duration_seconds Time from a request's last byte to its response.\n"
    << "# TYPE aicloud_http_request_duration_seconds histogram\n";
  for (size_t i = 0; i < names_.size(); ++i) {
    const PerRoute& r = routes_[i];
    uint64_t count = r.count.load(std::memory_order_relaxed);
    if (!count) continue;
    std::string labels = "route=\"" + names_[i] + "\",method=\"" + methods_[i] + "\"";
    uint64_t cum = 0;
    for (size_t b = 0; b < kBuckets.size(); ++b) {
      cum += r.buckets[b].load(std::memory_order_relaxed);
      o << "aicloud_http_request_duration_seconds_bucket{" << labels << ",le=\"" << kBuckets[b] << "\"} " << cum << "\n";
    }
    cum += r.buckets[kBuckets.size()].load(std::memory_order_relaxed);
    o << "aicloud_http_request_duration_seconds_bucket{" << labels << ",le=\"+Inf\"} " << cum << "\n";
    o << "aicloud_http_request_duration_seconds_sum{" << labels << "} " << double(r.sum_us.load()) / 1e6 << "\n";
    o << "aicloud_http_request_duration_seconds_count{" << labels << "} " << count << "\n";
  }
  // Every route the server serves, requested or not: dashboards can list them, and the security
  // tests check that each one is covered by their table.
  o << "# HELP aicloud_http_route_info The routes this server serves.\n"
    << "# TYPE aicloud_http_route_info gauge\n";
  for (size_t i = 0; i + 1 < names_.size(); ++i) {
    o << "aicloud_http_route_info{route=\"" << names_[i] << "\",method=\"" << methods_[i] << "\"} 1\n";
  }
  o << "# HELP aicloud_http_open_connections Client connections open now.\n"
    << "# TYPE aicloud_http_open_connections gauge\n"
    << "aicloud_http_open_connections " << open_connections << "\n";
  return o.str();
}

}  // namespace aicloud::http
