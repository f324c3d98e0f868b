#include "gateway/usage_scan.h"

#include <cmath>
#include <optional>

#include "util/json_scan.h"
#include "util/json_util.h"

namespace aicloud::gateway {

namespace {

// A count as the usage gives it: an integer as it is (one beyond int64, the largest), a fraction
// or exponent cut to an integer (0 beyond ±9e18), a value of another type 0. False when v is not
// valid JSON.
bool count(std::string_view v, int64_t& out) {
  out = 0;
  if (v.empty() || !(v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))) return json_scan::valid(v);
  json_scan::Number n;
  const char* end = v.data() + v.size();
  if (json_scan::detail::number_end(v.data(), end, n) != end) return false;
  switch (n.kind) {
    case json_scan::Number::Kind::kInteger: out = n.integer; break;
    case json_scan::Number::Kind::kUnsigned: out = n.unsigned_ > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(n.unsigned_); break;
    case json_scan::Number::Kind::kFloat:
      out = std::isfinite(n.floating) && std::fabs(n.floating) < 9e18 ? int64_t(n.floating) : 0;
      break;
  }
  return true;
}

// Hands f(key, value) the members of v, an object, in order (f returns false when a value it
// reads is not valid JSON). A value of another type has none, if it is valid JSON. False when v
// is not valid where it was read; members nobody reads are skipped, not checked.
template <class F>
bool members(std::string_view v, F&& f) {
  if (v.empty() || v[0] != '{') return json_scan::valid(v);  // null, a number, ...: nothing in it
  bool ok = true;
  return for_each_top_level_member(v, [&](std::string_view k, std::string_view x) { return ok = f(k, x); }) && ok;
}

// The usage object's counts; a usage that is not an object (OpenAI's streams send null in every
// chunk but the last) says nothing.
bool read_usage(std::string_view v, UsageSeen& seen) {
  int64_t cached = 0;
  bool ok = members(v, [&](std::string_view k, std::string_view x) {
    if (k == "prompt_tokens") return count(x, seen.prompt);
    if (k == "completion_tokens") return count(x, seen.completion);
    if (k == "prompt_tokens_details") {
      return members(x, [&](std::string_view k2, std::string_view y) { return k2 != "cached_tokens" || count(y, cached); });
    }
    return true;
  });
  if (!ok) return false;
  seen.usage = v.front() == '{';
  seen.cached = cached;
  return true;
}

// The top-level members a reading of usage needs, each the last of its name (as a parsed tree
// keeps it); the rest of the document (the relayed text, vectors, logprobs) is skipped unread.
struct Members {
  std::optional<std::string_view> usage, timings, choices;
};

// False when doc is not an object or its outline is broken (it ends inside a value).
bool walk(std::string_view doc, Members& m) {
  return for_each_top_level_member(doc, [&](std::string_view k, std::string_view v) {
    if (k == "usage") m.usage = v;
    else if (k == "timings") m.timings = v;
    else if (k == "choices") m.choices = v;
    return true;
  });
}

// The usage member, and for its cached count llama-server's timings.cache_n when the usage has
// none: false when the usage is not valid JSON. A timings member that is not is left unread.
bool read(const Members& m, UsageSeen& seen) {
  if (m.usage && !read_usage(*m.usage, seen)) return false;
  int64_t cache_n = 0;
  if (m.timings && seen.cached == 0 &&
      members(*m.timings, [&](std::string_view k, std::string_view x) { return k != "cache_n" || count(x, cache_n); })) {
    seen.cached = cache_n;
  }
  return true;
}

// [] or {} (whitespace inside allowed) or null.
bool is_empty_container(std::string_view v) {
  if (v == "null") return true;
  if (v.size() < 2 || (v.front() != '[' && v.front() != '{')) return false;
  const char* p = json_scan::detail::skip_ws(v.data() + 1, v.data() + v.size());
  return p < v.data() + v.size() && *p == (v.front() == '[' ? ']' : '}');
}

}  // namespace

bool scan_usage(std::string_view doc, UsageSeen& out) {
  UsageSeen seen;
  if (Members m; walk(doc, m)) {
    if (!read(m, seen)) return false;
    seen.choices_empty = m.choices && is_empty_container(*m.choices);
  } else if (!json_scan::valid(doc)) {
    return false;  // (valid but not an object, a bare scalar: nothing to read)
  }
  out = seen;
  return true;
}

bool scan_answer_usage(std::string_view body, UsageSeen& out) {
  Members m;
  UsageSeen seen;
  if (!walk(body, m) || !m.usage || !read(m, seen) || !seen.usage) return false;
  out = seen;
  return true;
}

}  // namespace aicloud::gateway
