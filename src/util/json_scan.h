// A strict JSON reader that builds nothing: it validates a document exactly as nlohmann's parser
// does (RFC 8259, UTF-8 checked, a leading BOM skipped, a number too large for a double refused)
// and hands a handler its events with the text in place, no allocation. The gateway reads a few
// members of every request and answer with it; nlohmann's SAX lexer, which copies every string
// and reads a byte at a time, was the largest user-space cost per proxied request.
//
// The handler (a template parameter: no virtual calls) has these members; each returns false to
// stop the scan, which then returns false:
//   bool null();  bool boolean(bool);  bool number(const json_scan::Number&);
//   bool string(std::string_view raw, bool escaped);   raw: the text between the quotes
//   bool key(std::string_view raw, bool escaped);      (json_scan::unescape gives the value)
//   bool start_object();  bool end_object();  bool start_array();  bool end_array();
#pragma once
#include <bitset>
#include <cstdint>
#include <string>
#include <string_view>

#include "util/json_util.h"

namespace aicloud::json_scan {

// A number as nlohmann classifies it: a negative integer that fits int64, a non-negative one that
// fits uint64, and anything else (a fraction, an exponent, a larger integer) a finite double.
struct Number {
  enum class Kind : uint8_t { kInteger, kUnsigned, kFloat } kind = Kind::kUnsigned;
  int64_t integer = 0;   // kInteger
  uint64_t unsigned_ = 0;  // kUnsigned
  double floating = 0;   // kFloat
};

// The value of a string's raw text that scan() accepted (escapes decoded to UTF-8).
std::string unescape(std::string_view raw);

namespace detail {
// p is just past an opening quote: returns the closing quote, or nullptr when the string is
// invalid (a control character, a bad escape or surrogate, invalid UTF-8) or does not end.
const char* string_end(const char* p, const char* end, bool& escaped);
// p is at '-' or a digit: returns the end of the number, or nullptr when it is not one.
const char* number_end(const char* p, const char* end, Number& n);
inline const char* skip_ws(const char* p, const char* end) {
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  return p;
}
}  // namespace detail

// Scans one document: true when it is valid JSON nested at most kMaxJsonDepth deep and the
// handler never said stop.
template <class Handler>
bool scan(std::string_view text, Handler& h) {
  using namespace detail;
  const char* p = text.data();
  const char* const end = p + text.size();
  if (end - p >= 3 && std::string_view(p, 3) == "\xEF\xBB\xBF") p += 3;  // a BOM, as nlohmann skips it
  std::bitset<kMaxJsonDepth + 1> in_object;  // [d]: the container at depth d is an object
  size_t depth = 0;
  auto literal = [&](std::string_view word) {
    if (size_t(end - p) < word.size() || std::string_view(p, word.size()) != word) return false;
    p += word.size();
    return true;
  };
  // At a member's key: reads it and the colon after it.
  auto member_key = [&] {
    if (p == end || *p != '"') return false;
    bool esc = false;
    const char* q = string_end(p + 1, end, esc);
    if (!q || !h.key(std::string_view(p + 1, size_t(q - p - 1)), esc)) return false;
    p = skip_ws(q + 1, end);
    if (p == end || *p != ':') return false;
    p = skip_ws(p + 1, end);
    return true;
  };
  p = skip_ws(p, end);
  for (;;) {
    // A value.
    if (p == end) return false;
    switch (*p) {
      case '{':
      case '[': {
        bool object = *p == '{';
        if (++depth > kMaxJsonDepth) return false;
        in_object[depth] = object;
        if (!(object ? h.start_object() : h.start_array())) return false;
        p = skip_ws(p + 1, end);
        if (p < end && *p == (object ? '}' : ']')) {
          ++p;
          --depth;
          if (!(object ? h.end_object() : h.end_array())) return false;
          break;
        }
        if (object && !member_key()) return false;
        continue;  // its first value
      }
      case '"': {
        bool esc = false;
        const char* q = string_end(p + 1, end, esc);
        if (!q || !h.string(std::string_view(p + 1, size_t(q - p - 1)), esc)) return false;
        p = q + 1;
        break;
      }
      case 't':
        if (!literal("true") || !h.boolean(true)) return false;
        break;
      case 'f':
        if (!literal("false") || !h.boolean(false)) return false;
        break;
      case 'n':
        if (!literal("null") || !h.null()) return false;
        break;
      default: {
        Number n;
        const char* q = number_end(p, end, n);
        if (!q || !h.number(n)) return false;
        p = q;
      }
    }
    // After a value: the document's end, or what follows it in its container.
    for (;;) {
      p = skip_ws(p, end);
      if (depth == 0) return p == end;
      if (p == end) return false;
      bool object = in_object[depth];
      if (*p == (object ? '}' : ']')) {
        ++p;
        --depth;
        if (!(object ? h.end_object() : h.end_array())) return false;
        continue;
      }
      if (*p != ',') return false;
      p = skip_ws(p + 1, end);
      if (object && !member_key()) return false;
      break;  // the next value
    }
  }
}

// Whether text is one valid JSON document nested at most kMaxJsonDepth deep (scan() with a
// handler that takes everything).
bool valid(std::string_view text);

}  // namespace aicloud::json_scan
