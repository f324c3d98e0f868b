#include "http/router.h"

#include <algorithm>
#include <iterator>

namespace aicloud::http {

static std::vector<std::string_view> split_path(std::string_view p) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < p.size()) {
    if (p[i] == '/') { ++i; continue; }
    size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    out.push_back(p.substr(i, j - i));
    i = j;
  }
  return out;
}

static bool is_placeholder(const std::string& s) { return s.size() > 1 && s.front() == '{'; }

int Router::add(std::string method, std::string pattern) {
  Route r{std::move(method), std::move(pattern), {}};
  for (auto s : split_path(r.pattern)) r.segments.emplace_back(s);
  int index = int(routes_.size());
  size_t n = r.segments.size();
  if (by_count_.size() <= n) by_count_.resize(n + 1);
  if (n == 0 || is_placeholder(r.segments.back())) {
    by_count_[n].any_last.push_back(index);
  } else {
    by_count_[n].by_last[r.segments.back()].push_back(index);
  }
  routes_.push_back(std::move(r));
  return index;
}

// Of two routes that match the same path, the one with a literal segment where the other has a
// placeholder first (left to right) wins, whichever was added first: POST /v1/threads/runs
// beside POST /v1/threads/{thread_id}.
static bool more_specific(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (size_t k = 0; k < a.size() && k < b.size(); ++k) {
    bool pa = is_placeholder(a[k]), pb = is_placeholder(b[k]);
    if (pa != pb) return !pa;
  }
  return false;
}

RouteMatch Router::match(std::string_view method, std::string_view path) const {
  RouteMatch m;
  auto segs = split_path(path);
  if (segs.size() >= by_count_.size()) return m;
  const Bucket& bucket = by_count_[segs.size()];
  static const std::vector<int> kNone;
  const std::vector<int>* literal = &kNone;
  if (!segs.empty()) {
    auto it = bucket.by_last.find(segs.back());
    if (it != bucket.by_last.end()) literal = &it->second;
  }
  // The candidates in the order they were added (which breaks ties and orders Allow).
  std::vector<int> candidates;
  candidates.reserve(literal->size() + bucket.any_last.size());
  std::merge(literal->begin(), literal->end(), bucket.any_last.begin(), bucket.any_last.end(),
             std::back_inserter(candidates));
  std::vector<std::string_view> allowed;
  for (int ci : candidates) {
    size_t i = size_t(ci);
    const Route& r = routes_[i];
    bool ok = true;
    for (size_t k = 0; k < segs.size() && ok; ++k) {
      const auto& s = r.segments[k];
      if (!is_placeholder(s)) ok = s == segs[k];
    }
    if (!ok) continue;
    m.path_known = true;
    if (std::find(allowed.begin(), allowed.end(), r.method) == allowed.end()) {
      allowed.push_back(r.method);
      if (!m.allow.empty()) m.allow += ", ";
      m.allow += r.method;
    }
    if (r.method == method && (m.route < 0 || more_specific(r.segments, routes_[size_t(m.route)].segments))) {
      m.route = int(i);
    }
  }
  if (m.route >= 0) {
    const Route& r = routes_[size_t(m.route)];
    for (size_t k = 0; k < segs.size(); ++k) {
      const auto& s = r.segments[k];
      if (is_placeholder(s)) m.params.emplace_back(s.substr(1, s.size() - 2), segs[k]);
    }
  }
  return m;
}

bool percent_decode(std::string_view in, std::string& out, bool plus_is_space) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      auto hex = [](char h) {
        return h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      };
      int a = hex(in[i + 1]), b = hex(in[i + 2]);
      if (a < 0 || b < 0) return false;
      out.push_back(char(a * 16 + b));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return true;
}

bool parse_target(std::string_view target, Target& out) {
  if (target.empty() || target.front() != '/') return false;
  size_t q = target.find('?');
  if (!percent_decode(target.substr(0, q), out.path, false)) return false;
  if (out.path.find('\0') != std::string::npos) return false;
  if (q == std::string_view::npos) return true;
  std::string_view qs = target.substr(q + 1);
  while (!qs.empty()) {
    size_t amp = qs.find('&');
    std::string_view kv = qs.substr(0, amp);
    if (!kv.empty()) {
      size_t eq = kv.find('=');
      std::string k, v;
      if (!percent_decode(kv.substr(0, eq), k, true)) return false;
      if (eq != std::string_view::npos && !percent_decode(kv.substr(eq + 1), v, true)) return false;
      out.query.emplace_back(std::move(k), std::move(v));
    }
    if (amp == std::string_view::npos) break;
    qs = qs.substr(amp + 1);
  }
  return true;
}

}  // namespace aicloud::http
