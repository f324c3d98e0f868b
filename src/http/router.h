// Maps (method, path) to a route index and its path parameters. Patterns are literal segments
// and {name} placeholders: "/v1/organization/projects/{project_id}/api_keys/{key_id}".
#pragma once
#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace aicloud::http {

struct RouteMatch {
  int route = -1;              // index returned by add(); -1 if none
  bool path_known = false;     // some route has this path (with another method): 405, not 404
  std::string allow;           // methods allowed on this path, for the Allow header
  std::vector<std::pair<std::string, std::string>> params;

  std::string_view param(std::string_view name) const {
    for (const auto& [k, v] : params) if (k == name) return v;
    return {};
  }
};

class Router {
 public:
  int add(std::string method, std::string pattern);
  // Routes are added before the first match (at start-up); match is then safe from any thread.
  RouteMatch match(std::string_view method, std::string_view path) const;
  const std::string& pattern(int route) const { return routes_[size_t(route)].pattern; }
  const std::string& method(int route) const { return routes_[size_t(route)].method; }
  size_t size() const { return routes_.size(); }

 private:
  struct Route {
    std::string method, pattern;
    std::vector<std::string> segments;  // "{x}" = placeholder
  };
  std::vector<Route> routes_;

  // The routes a path can match, found without trying every route (the API has a few hundred):
  // by the number of segments, then by the last segment when it is literal; routes that end in
  // a placeholder are tried for every last segment. Indices ascending (added order).
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Bucket {
    std::unordered_map<std::string, std::vector<int>, Hash, std::equal_to<>> by_last;
    std::vector<int> any_last;
  };
  std::vector<Bucket> by_count_;  // [number of segments]
  RouteMatch walk(std::string_view method, std::string_view path) const;

  // A path that is some route's literal pattern ("/v1/chat/completions": the model API's), asked
  // with that route's method: its whole answer, found by one lookup instead of a walk of every
  // route with as many segments (a fifth of the server's routing and dispatch per request).
  // Filled by the first match after the last add, from walk(), so it cannot answer otherwise.
  struct Known {
    std::string method;
    RouteMatch match;
  };
  struct Literal {  // (a copy of the router starts with it empty: it fills its own)
    std::unordered_map<std::string, std::vector<Known>, Hash, std::equal_to<>> paths;
    std::atomic<bool> ready{false};
    std::mutex mu;
    Literal() = default;
    Literal(const Literal&) {}
    Literal& operator=(const Literal&) {
      ready = false;
      return *this;
    }
  };
  mutable Literal literal_;
  void fill_literal() const;
};

// Splits "/a/b?x=1&y=%20" into a path and decoded query parameters. Returns false for a path
// that is not a valid origin-form target (bad percent-encoding, no leading slash).
struct Target {
  std::string path;
  std::vector<std::pair<std::string, std::string>> query;
  std::string_view get(std::string_view key) const {
    for (const auto& [k, v] : query) if (k == key) return v;
    return {};
  }
  bool has(std::string_view key) const {
    for (const auto& [k, v] : query) if (k == key) return true;
    return false;
  }
};
bool parse_target(std::string_view target, Target& out);
bool percent_decode(std::string_view in, std::string& out, bool plus_is_space);

}  // namespace aicloud::http
