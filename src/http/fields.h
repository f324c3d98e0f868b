// The syntax of header fields (RFC 9110 §5), for the messages aicloud writes by hand (no Beast
// serializer: a field that could split the message it is written into is dropped, never sent)
// and for the parsers of what it reads (http/request_parser.h, http/answer_parser.h).
#pragma once
#include <strings.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace aicloud::http {

// RFC 9110 tchar: the bytes of a token (a field name, a method, a coding).
inline constexpr std::array<bool, 256> kTokenChar = [] {
  std::array<bool, 256> t{};
  for (int c = 33; c < 127; ++c) t[size_t(c)] = true;
  for (char c : std::string_view("()<>@,;:\\\"/[]?={}")) t[static_cast<unsigned char>(c)] = false;
  return t;
}();

// The bytes a received field value may hold: visible bytes, obs-text, spaces and tabs; never
// NUL, CR, LF or another control byte.
inline constexpr std::array<bool, 256> kValueChar = [] {
  std::array<bool, 256> t{};
  t['\t'] = true;
  for (int c = 0x20; c < 256; ++c) t[size_t(c)] = c != 0x7f;
  return t;
}();

inline bool is_ows(char c) { return c == ' ' || c == '\t'; }

inline bool value_chars_ok(std::string_view v) {
  // Eight bytes at a time: a word with no byte under 0x20 and none equal to 0x7f is all good
  // (exact tests: see "Bit Twiddling Hacks", hasless and haszero); a word that might hold a
  // tab is looked at byte by byte. A request's and an answer's field values are most of their
  // heads' bytes, checked for every message.
  constexpr uint64_t kOnes = 0x0101010101010101ull, kHigh = 0x8080808080808080ull;
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, v.data() + i, 8);
    uint64_t del = w ^ (kOnes * 0x7f);
    if ((((w - kOnes * 0x20) & ~w) | ((del - kOnes) & ~del)) & kHigh) {
      for (size_t k = i; k < i + 8; ++k) {
        if (!kValueChar[static_cast<unsigned char>(v[k])]) return false;
      }
    }
  }
  for (; i < v.size(); ++i) {
    if (!kValueChar[static_cast<unsigned char>(v[i])]) return false;
  }
  return true;
}

inline std::string_view trim_ows(std::string_view v) {
  while (!v.empty() && is_ows(v.front())) v.remove_prefix(1);
  while (!v.empty() && is_ows(v.back())) v.remove_suffix(1);
  return v;
}

// Whether a token equals a lower-case name, in any case. (c | 0x20 maps only 'A'-'Z' onto
// 'a'-'z', among the bytes a token can hold, and leaves '-' and digits as they are.)
// Compared a word at a time (the last word overlapping the one before it): the framing fields'
// names are compared for every field of every message.
inline bool token_is(std::string_view token, std::string_view lower) {
  const size_t n = token.size();
  if (n != lower.size()) return false;
  auto differ = [&](size_t i, auto word) {  // the word-sized bytes at i, token's in any case
    decltype(word) a, b;
    std::memcpy(&a, token.data() + i, sizeof a);
    std::memcpy(&b, lower.data() + i, sizeof b);
    return (a | decltype(word)(0x2020202020202020ull)) != b;
  };
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8) {
      if (differ(i, uint64_t{})) return false;
    }
    return !differ(n - 8, uint64_t{});
  }
  if (n >= 4) return !differ(0, uint32_t{}) && !differ(n - 4, uint32_t{});
  for (size_t i = 0; i < n; ++i) {
    if ((token[i] | 0x20) != lower[i]) return false;
  }
  return true;
}

// Calls f on each element of a comma-separated list (RFC 9110 §5.6.1), trimmed; empty ones skipped.
template <class F>
void each_element(std::string_view v, F&& f) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    std::string_view e = trim_ows(v.substr(0, comma));
    if (!e.empty()) f(e);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
}

// The Connection field's options that say the connection's fate (RFC 9112 §9.3): close and
// keep-alive, in any case, among the others. Several fields add up.
inline void connection_options(std::string_view value, bool& close, bool& keep_alive) {
  // (One option alone, as nearly every message has it, needs no walk of the list.)
  if (token_is(value, "keep-alive")) {
    keep_alive = true;
    return;
  }
  if (token_is(value, "close")) {
    close = true;
    return;
  }
  each_element(value, [&](std::string_view e) {
    if (token_is(e, "close")) close = true;
    else if (token_is(e, "keep-alive")) keep_alive = true;
  });
}

inline int hex_digit(char c) {  // -1: not one
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Case-insensitive equality of field names.
inline bool same_field(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// A field name must be an RFC 9110 token. (Every field of every response passes here: a table,
// not a strchr per byte.)
inline bool field_name_ok(std::string_view n) {
  if (n.empty()) return false;
  for (unsigned char ch : n) {
    if (!kTokenChar[ch]) return false;
  }
  return true;
}

// The fields that frame a message (its length and the connection's fate): the writer's own,
// never copied from what a caller passes.
inline bool framing_field(std::string_view n) {
  return same_field(n, "content-length") || same_field(n, "transfer-encoding") || same_field(n, "connection");
}

// A field value must not hold CR or LF (which would end the field, or the head, early).
inline bool field_value_ok(std::string_view v) {
  for (char ch : v) {
    if (ch == '\r' || ch == '\n') return false;
  }
  return true;
}

}  // namespace aicloud::http
