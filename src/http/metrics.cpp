#include "http/metrics.h"

#include <sstream>

#include "util/per_thread.h"

namespace aicloud::http {

Metrics::Metrics(std::vector<std::string> route_names, std::vector<std::string> route_methods)
    : names_(std::move(route_names)), methods_(std::move(route_methods)) {
  names_.push_back("unmatched");
  methods_.push_back("");
  routes_ = std::make_unique<PerRoute[]>(kShards * names_.size());
}

void Metrics::record(int route, unsigned status, int64_t latency_us) {
  size_t i = route < 0 || size_t(route) >= names_.size() - 1 ? names_.size() - 1 : size_t(route);
  PerRoute& r = at(thread_shard(kShards), i);
  double s = double(latency_us) / 1e6;
  size_t b = 0;
  while (b < kBuckets.size() && s > kBuckets[b]) ++b;
  r.buckets[b].fetch_add(1, std::memory_order_relaxed);
  r.sum_us.fetch_add(uint64_t(latency_us < 0 ? 0 : latency_us), std::memory_order_relaxed);
  r.count.fetch_add(1, std::memory_order_relaxed);
  r.by_status[status < 600 ? status : 599].fetch_add(1, std::memory_order_relaxed);
}

std::string Metrics::render(int64_t open_connections) const {
  // A counter's total over the shards: total(route, [](const PerRoute& r) -> auto& { return r.count; })
  auto total = [&](size_t route, auto counter) {
    uint64_t n = 0;
    for (size_t s = 0; s < kShards; ++s) n += counter(at(s, route)).load(std::memory_order_relaxed);
    return n;
  };
  std::ostringstream o;
  o << "# HELP aicloud_http_requests_total HTTP requests by route, method and status.\n"
    << "# TYPE aicloud_http_requests_total counter\n";
  for (size_t i = 0; i < names_.size(); ++i) {
    for (unsigned st = 100; st < 600; ++st) {
      uint64_t n = total(i, [st](const PerRoute& r) -> auto& { return r.by_status[st]; });
      if (n) {
        o << "aicloud_http_requests_total{route=\"" << names_[i] << "\",method=\"" << methods_[i] << "\",status=\""
          << st << "\"} " << n << "\n";
      }
    }
  }
  o << "# HELP aicloud_http_request_duration_seconds Time from a request's last byte to its response.\n"
    << "# TYPE aicloud_http_request_duration_seconds histogram\n";
  for (size_t i = 0; i < names_.size(); ++i) {
    uint64_t count = total(i, [](const PerRoute& r) -> auto& { return r.count; });
    if (!count) continue;
    std::string labels = "route=\"" + names_[i] + "\",method=\"" + methods_[i] + "\"";
    uint64_t cum = 0;
    for (size_t b = 0; b < kBuckets.size(); ++b) {
      cum += total(i, [b](const PerRoute& r) -> auto& { return r.buckets[b]; });
      o << "aicloud_http_request_duration_seconds_bucket{" << labels << ",le=\"" << kBuckets[b] << "\"} " << cum << "\n";
    }
    cum += total(i, [](const PerRoute& r) -> auto& { return r.buckets[kBuckets.size()]; });
    o << "aicloud_http_request_duration_seconds_bucket{" << labels << ",le=\"+Inf\"} " << cum << "\n";
    o << "aicloud_http_request_duration_seconds_sum{" << labels << "} " << double(total(i, [](const PerRoute& r) -> auto& { return r.sum_us; })) / 1e6 << "\n";
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
