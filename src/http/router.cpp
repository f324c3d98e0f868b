#include "http/router.h"

#include <algorithm>
#include <array>
#include <stdexcept>

namespace aicloud::http {

// A path's segments, split without allocating: a request's path is split for every request. A
// path with more segments than kMax is counted (so that it matches no route) but not kept.
struct Segments {
  static constexpr size_t kMax = 16;
  std::array<std::string_view, kMax> seg;
  size_t n = 0;
  explicit Segments(std::string_view p) {
    size_t i = 0;
    while (i < p.size()) {
      if (p[i] == '/') { ++i; continue; }
      size_t j = p.find('/', i);
      if (j == std::string_view::npos) j = p.size();
      if (n < kMax) seg[n] = p.substr(i, j - i);
      ++n;
      i = j;
    }
  }
  size_t size() const { return n; }
  bool kept() const { return n <= kMax; }
  std::string_view operator[](size_t k) const { return seg[k]; }
  std::string_view back() const { return seg[n - 1]; }
};

static bool is_placeholder(const std::string& s) { return s.size() > 1 && s.front() == '{'; }

int Router::add(std::string method, std::string pattern) {
  Route r{std::move(method), std::move(pattern), {}};
  Segments segs(r.pattern);
  if (!segs.kept()) throw std::invalid_argument("route pattern with more than 16 segments: " + r.pattern);
  for (size_t k = 0; k < segs.size(); ++k) r.segments.emplace_back(segs[k]);
  int index = int(routes_.size());
  size_t n = r.segments.size();
  if (by_count_.size() <= n) by_count_.resize(n + 1);
  if (n == 0 || is_placeholder(r.segments.back())) {
    by_count_[n].any_last.push_back(index);
  } else {
    by_count_[n].by_last[r.segments.back()].push_back(index);
  }
  routes_.push_back(std::move(r));
  literal_.ready = false;
  return index;
}

void Router::fill_literal() const {
  std::lock_guard lk(literal_.mu);
  if (literal_.ready) return;
  literal_.paths.clear();
  for (const Route& r : routes_) {
    if (std::any_of(r.segments.begin(), r.segments.end(), is_placeholder)) continue;
    auto& known = literal_.paths[r.pattern];
    if (std::none_of(known.begin(), known.end(), [&](const Known& k) { return k.method == r.method; })) {
      known.push_back({r.method, walk(r.method, r.pattern)});
    }
  }
  literal_.ready = true;
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

// Whether `method` is already in the comma-separated list `allow` ("GET, POST").
static bool allows(std::string_view allow, std::string_view method) {
  while (!allow.empty()) {
    size_t comma = allow.find(", ");
    if (allow.substr(0, comma) == method) return true;
    if (comma == std::string_view::npos) break;
    allow.remove_prefix(comma + 2);
  }
  return false;
}

RouteMatch Router::match(std::string_view method, std::string_view path) const {
  if (!literal_.ready) fill_literal();
  if (auto it = literal_.paths.find(path); it != literal_.paths.end()) {
    for (const Known& k : it->second) {
      if (k.method == method) return k.match;
    }
  }
  return walk(method, path);
}

RouteMatch Router::walk(std::string_view method, std::string_view path) const {
  RouteMatch m;
  Segments segs(path);
  if (segs.size() >= by_count_.size() || !segs.kept()) return m;
  const Bucket& bucket = by_count_[segs.size()];
  static const std::vector<int> kNone;
  const std::vector<int>* literal = &kNone;
  if (segs.size() > 0) {
    auto it = bucket.by_last.find(segs.back());
    if (it != bucket.by_last.end()) literal = &it->second;
  }
  // The candidates in the order they were added (which breaks ties and orders Allow): the two
  // ascending lists, merged as they are walked.
  auto a = literal->begin(), b = bucket.any_last.begin();
  while (a != literal->end() || b != bucket.any_last.end()) {
    size_t i = size_t(b == bucket.any_last.end() || (a != literal->end() && *a < *b) ? *a++ : *b++);
    const Route& r = routes_[i];
    bool ok = true;
    for (size_t k = 0; k < segs.size() && ok; ++k) {
      const auto& s = r.segments[k];
      if (!is_placeholder(s)) ok = s == segs[k];
    }
    if (!ok) continue;
    m.path_known = true;
    if (!allows(m.allow, r.method)) {
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
  // Most paths hold nothing to decode: copied whole (a request's path is decoded for every request).
  if (in.find('%') == std::string_view::npos && (!plus_is_space || in.find('+') == std::string_view::npos)) {
    out.assign(in);
    return true;
  }
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
