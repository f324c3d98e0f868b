#include "util/json_util.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "util/error.h"

namespace aicloud {

// The deepest nesting of arrays and objects that a valid body reaches (exact for valid JSON;
// for invalid JSON the parser reports the error). nlohmann parses iteratively, but copying,
// comparing and dumping a value recurse once per level: a body of a few MB of '[' would
// overflow the stack of the thread that copies it.
static size_t nesting_depth(std::string_view s) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

json parse_json_body(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return json::object();
  if (nesting_depth(body) > kMaxJsonDepth) {
    throw bad_request("The JSON body of your request is nested too deeply: at most " + std::to_string(kMaxJsonDepth) +
                          " levels of arrays and objects.",
                      "invalid_json");
  }
  try {
    return json::parse(body);
  } catch (const json::exception& e) {
    // nlohmann's message names the byte position and what it found (including invalid UTF-8).
    // Not only parse_error: a number too large for a double ("1e400") is an out_of_range.
    std::string msg = e.what();
    auto pos = msg.find("] ");
    throw bad_request("We could not parse the JSON body of your request: " +
                          (pos == std::string::npos ? msg : msg.substr(pos + 2)),
                      "invalid_json");
  }
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

BodyReader::BodyReader(const json& body, std::string prefix) : body_(body), prefix_(std::move(prefix)) {
  if (!body_.is_object()) throw bad_request("The request body must be a JSON object.", "invalid_json");
}

const json* BodyReader::field(std::string_view name, const char* type_name,
                              bool (json::*is)() const noexcept) {
  seen_.emplace(name);
  std::string what = named(name);
  auto it = body_.find(name);
  if (it == body_.end() || it->is_null()) return nullptr;
  if (!((*it).*is)()) throw invalid_field(what, "'" + what + "' must be " + type_name + ".");
  return &*it;
}

std::string BodyReader::str(std::string_view name, size_t min_len, size_t max_len) {
  auto v = opt_str(name, min_len, max_len);
  if (!v) {
    throw ApiError(400, "invalid_request_error", "Missing required parameter: '" + named(name) + "'.",
                   "missing_required_parameter", named(name));
  }
  return *v;
}

std::optional<std::string> BodyReader::opt_str(std::string_view name, size_t min_len, size_t max_len) {
  const json* v = field(name, "a string", &json::is_string);
  if (!v) return std::nullopt;
  const auto& s = v->get_ref<const std::string&>();
  if (s.size() < min_len) {
    throw invalid_field(named(name), "'" + named(name) + "' must be at least " + std::to_string(min_len) + " characters.");
  }
  if (s.size() > max_len) {
    throw invalid_field(named(name), "'" + named(name) + "' must be at most " + std::to_string(max_len) + " characters.");
  }
  return s;
}

std::optional<bool> BodyReader::opt_bool(std::string_view name) {
  const json* v = field(name, "a boolean", &json::is_boolean);
  if (!v) return std::nullopt;
  return v->get<bool>();
}

std::optional<int64_t> BodyReader::opt_int(std::string_view name, int64_t min, int64_t max) {
  const json* v = field(name, "an integer", &json::is_number_integer);
  if (!v) return std::nullopt;
  int64_t n = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v->get<int64_t>();
  if (n < min || n > max) {
    throw invalid_field(named(name), "'" + named(name) + "' must be between " + std::to_string(min) +
                                               " and " + std::to_string(max) + ".");
  }
  return n;
}

std::optional<std::string> BodyReader::opt_enum(std::string_view name, const std::set<std::string>& allowed) {
  auto v = opt_str(name, 0, 64);
  if (v && !allowed.count(*v)) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "'" : ", '") + a + "'";
    throw invalid_field(named(name), "'" + named(name) + "' must be one of " + list + ".");
  }
  return v;
}

const json* BodyReader::opt_object(std::string_view name) { return field(name, "an object", &json::is_object); }

const json* BodyReader::opt_array(std::string_view name) { return field(name, "an array", &json::is_array); }

void BodyReader::done() const {
  for (auto it = body_.begin(); it != body_.end(); ++it) {
    if (!seen_.count(it.key())) {
      throw ApiError(400, "invalid_request_error", "Unrecognized request argument supplied: '" + prefix_ + it.key() + "'.",
                     "unknown_parameter", prefix_ + it.key());
    }
  }
}

}  // namespace aicloud

namespace aicloud {

bool for_each_top_level_member(std::string_view d,
                               const std::function<bool(std::string_view key, std::string_view value)>& f) {
  size_t i = 0;
  const size_t n = d.size();
  auto skip_ws = [&] {
    while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r')) ++i;
  };
  // At an opening quote: moves past the closing one; the raw text between them. The quote and
  // the backslashes are found by memchr (a completion's text is most of an answer).
  auto string = [&]() -> std::optional<std::string_view> {
    size_t begin = ++i;
    while (i < n) {
      const char* q = static_cast<const char*>(std::memchr(d.data() + i, '"', n - i));
      if (!q) break;
      size_t quote = size_t(q - d.data());
      const char* b = static_cast<const char*>(std::memchr(d.data() + i, '\\', quote - i));
      if (!b) {
        i = quote + 1;
        return d.substr(begin, quote - begin);
      }
      i = size_t(b - d.data()) + 2;  // past the escape and the byte it escapes
    }
    i = n;
    return std::nullopt;
  };
  // The bytes a walk over a value stops at: a scalar's ends, and inside an object or array the
  // bytes that open or close something (a table: one load and test per byte skipped).
  static constexpr auto kScalarEnd = [] {
    std::array<bool, 256> t{};
    for (char c : std::string_view(",}] \n\r\t")) t[static_cast<unsigned char>(c)] = true;
    return t;
  }();
  static constexpr auto kNested = [] {
    std::array<bool, 256> t{};
    for (char c : std::string_view("\"{}[]")) t[static_cast<unsigned char>(c)] = true;
    return t;
  }();
  // Moves past one value; false when the document ends inside it.
  auto value = [&]() -> bool {
    if (d[i] == '"') return string().has_value();
    if (d[i] != '{' && d[i] != '[') {
      while (i < n && !kScalarEnd[static_cast<unsigned char>(d[i])]) ++i;
      return true;
    }
    int depth = 0;
    while (i < n) {
      while (i < n && !kNested[static_cast<unsigned char>(d[i])]) ++i;
      if (i >= n) break;
      char c = d[i];
      if (c == '"') {
        if (!string()) return false;
        continue;
      }
      if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        ++i;
        return true;
      }
      ++i;
    }
    return false;
  };
  skip_ws();
  if (i >= n || d[i] != '{') return false;
  ++i;
  skip_ws();
  if (i < n && d[i] == '}') return true;
  while (true) {
    skip_ws();
    if (i >= n || d[i] != '"') return false;
    auto k = string();
    skip_ws();
    if (!k || i >= n || d[i] != ':') return false;
    ++i;
    skip_ws();
    if (i >= n) return false;
    size_t begin = i;
    if (!value()) return false;
    if (!f(*k, d.substr(begin, i - begin))) return true;
    skip_ws();
    if (i < n && d[i] == '}') return true;
    if (i >= n || d[i] != ',') return false;
    ++i;
  }
}

}  // namespace aicloud
