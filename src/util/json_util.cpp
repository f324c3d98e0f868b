#include "util/json_util.h"

#include <algorithm>
#include <array>
#include <cstring>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

namespace {

// The stops of the top-level walk below, found 16 bytes at a time (SSE2, in every x86-64): in a
// string, its closing quote or a backslash; inside a nested value, see skip_container. (Per
// byte, with a table, the walk was ~8 instructions a byte of a relayed answer.)
const char* quote_or_backslash(const char* p, const char* end) {
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
  for (; end - p >= 16; p += 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m128i m = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
    if (int bits = _mm_movemask_epi8(m)) return p + __builtin_ctz(unsigned(bits));
  }
#endif
  while (p < end && *p != '"' && *p != '\\') ++p;
  return p;
}

// The stop bytes of 16 bytes at p (fewer at the document's end: n), one bit per byte.
struct Stops {
  uint32_t quotes = 0, backslashes = 0, opens = 0, closes = 0;  // " \ {[ }]
};
Stops classify(const char* p, size_t n) {
  Stops s;
#ifdef __SSE2__
  alignas(16) char tail[16] = {};
  if (n < 16) p = static_cast<const char*>(std::memcpy(tail, p, n));  // (zero bytes stop nothing)
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  // '[' and ']' are '{' and '}' less 0x20, and no other byte becomes '{' or '}' with 0x20 set.
  __m128i folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
  s.quotes = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('"'))));
  s.backslashes = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
  s.opens = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(folded, _mm_set1_epi8('{'))));
  s.closes = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(folded, _mm_set1_epi8('}'))));
#else
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(p[i]);
    s.quotes |= uint32_t(c == '"') << i;
    s.backslashes |= uint32_t(c == '\\') << i;
    s.opens |= uint32_t((c | 0x20) == '{') << i;
    s.closes |= uint32_t((c | 0x20) == '}') << i;
  }
#endif
  return s;
}

// At an opening bracket or brace: moves p past the one that closes it; false when the document
// ends first. 16 bytes at a time. In a piece with no backslash, which bytes lie inside strings
// follows from its quotes alone (a prefix XOR of their bits), and only the brackets outside
// strings are visited; a piece with a backslash is walked stop by stop. (Visiting every quote,
// as the walk did, was the most of reading a relayed answer's usage.)
bool skip_container(const char*& p, const char* const end) {
  int depth = 0;
  bool in_string = false, escaped = false;  // at the start of the next piece
  for (const char* piece = p; piece < end; piece += 16) {
    const Stops s = classify(piece, std::min<size_t>(16, size_t(end - piece)));
    if (s.backslashes == 0 && !escaped) {
      uint32_t inside = s.quotes;  // bit i: byte i is inside a string (an opening quote is, a closing one not)
      inside ^= inside << 1;
      inside ^= inside << 2;
      inside ^= inside << 4;
      inside ^= inside << 8;
      const bool odd = (inside >> 15) & 1;  // (the XOR of all 16: an odd number of quotes)
      if (in_string) inside = ~inside;
      in_string ^= odd;
      for (uint32_t visit = (s.opens | s.closes) & ~inside & 0xFFFFu; visit; visit &= visit - 1) {
        const int i = __builtin_ctz(visit);
        if ((s.opens >> i) & 1) {
          ++depth;
        } else if (--depth == 0) {
          p = piece + i + 1;
          return true;
        }
      }
      continue;
    }
    uint32_t visit = s.quotes | s.backslashes | s.opens | s.closes;
    if (escaped) visit &= ~1u;  // escaped by the last piece's last byte
    escaped = false;
    for (; visit; visit &= visit - 1) {
      const int i = __builtin_ctz(visit);
      const uint32_t bit = 1u << i;
      if (in_string) {
        if (s.quotes & bit) {
          in_string = false;
        } else if (s.backslashes & bit) {
          visit &= ~(bit << 1);  // the byte it escapes
          escaped = i == 15;
        }
      } else if (s.quotes & bit) {
        in_string = true;
      } else if (s.opens & bit) {
        ++depth;
      } else if ((s.closes & bit) && --depth == 0) {
        p = piece + i + 1;
        return true;
      }
    }
  }
  p = end;
  return false;
}

}  // namespace

namespace json_walk_detail {
bool for_each_top_level_member(std::string_view doc, MemberFn call, void* f) {
  const char* p = doc.data();
  const char* const end = p + doc.size();
  // (Whitespace is seldom there: one test, of a byte above ' ', says it is not.)
  auto skip_ws = [&] {
    while (p < end && static_cast<unsigned char>(*p) <= ' ' && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  };
  // At an opening quote: moves past the closing one; the raw text between them.
  auto string = [&]() -> std::optional<std::string_view> {
    const char* begin = ++p;
    while ((p = quote_or_backslash(p, end)) < end) {
      if (*p == '"') return std::string_view(begin, size_t(p++ - begin));
      p += 2;  // past the escape and the byte it escapes
    }
    p = end;
    return std::nullopt;
  };
  // Moves past one value; false when the document ends inside it.
  auto value = [&]() -> bool {
    if (*p == '"') return string().has_value();
    if (*p != '{' && *p != '[') {
      static constexpr auto kEnds = [] {  // what ends a number, true, false or null
        std::array<bool, 256> t{};
        for (unsigned char c : std::string_view(",}] \n\r\t")) t[c] = true;
        return t;
      }();
      while (p < end && !kEnds[static_cast<unsigned char>(*p)]) ++p;
      return true;
    }
    return skip_container(p, end);
  };
  skip_ws();
  if (p >= end || *p != '{') return false;
  ++p;
  skip_ws();
  if (p < end && *p == '}') return true;
  while (true) {
    skip_ws();
    if (p >= end || *p != '"') return false;
    auto k = string();
    skip_ws();
    if (!k || p >= end || *p != ':') return false;
    ++p;
    skip_ws();
    if (p >= end) return false;
    const char* begin = p;
    if (!value()) return false;
    if (!call(f, *k, std::string_view(begin, size_t(p - begin)))) return true;
    skip_ws();
    if (p < end && *p == '}') return true;
    if (p >= end || *p != ',') return false;
    ++p;
  }
}

}  // namespace json_walk_detail

}  // namespace aicloud
