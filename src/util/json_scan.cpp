#include "util/json_scan.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace aicloud::json_scan {

namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// p at 'u' of \uXXXX: the code unit, or -1.
int code_unit(const char* p, const char* end) {
  if (end - p < 5) return -1;
  int v = 0;
  for (int i = 1; i <= 4; ++i) {
    int d = hex_digit(p[i]);
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// The first byte at or after p that a string cannot hold as it is: '"', '\\', a control
// character or a byte of a multi-byte UTF-8 sequence (>= 0x80); end when there is none.
const char* next_special(const char* p, const char* end) {
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
  while (end - p >= 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    // A signed compare: bytes >= 0x80 are negative, so "< 0x20" also finds them.
    __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                             _mm_cmplt_epi8(v, space));
    if (int bits = _mm_movemask_epi8(m)) return p + __builtin_ctz(unsigned(bits));
    p += 16;
  }
#endif
  for (; p < end; ++p) {
    unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) return p;
  }
  return end;
}

// p at the first byte of a multi-byte UTF-8 sequence: past it, or nullptr when it is not a
// well-formed one (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
const char* utf8_end(const char* p, const char* end) {
  auto b = [&](int i) { return static_cast<unsigned char>(p[i]); };
  unsigned char c = b(0);
  int n;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return nullptr;
  }
  if (end - p < n || b(1) < lo || b(1) > hi) return nullptr;
  for (int i = 2; i < n; ++i) {
    if (b(i) < 0x80 || b(i) > 0xBF) return nullptr;
  }
  return p + n;
}

// p at a backslash: past the escape, or nullptr when it is not a valid one (a high surrogate
// must be followed by a low one; a low one alone is invalid, as nlohmann has it).
const char* escape_end(const char* p, const char* end) {
  if (end - p < 2) return nullptr;
  switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': return p + 2;
    case 'u': break;
    default: return nullptr;
  }
  int u = code_unit(p + 1, end);
  if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return nullptr;
  if (u < 0xD800 || u > 0xDBFF) return p + 6;
  if (end - p < 12 || p[6] != '\\' || p[7] != 'u') return nullptr;
  int low = code_unit(p + 7, end);
  if (low < 0xDC00 || low > 0xDFFF) return nullptr;
  return p + 12;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace

namespace detail {

const char* string_end(const char* p, const char* end, bool& escaped) {
  for (;;) {
    p = next_special(p, end);
    if (p == end) return nullptr;
    unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"') return p;
    if (c == '\\') {
      escaped = true;
      p = escape_end(p, end);
    } else if (c < 0x20) {
      return nullptr;
    } else {
      p = utf8_end(p, end);
    }
    if (!p) return nullptr;
  }
}

const char* number_end(const char* p, const char* end, Number& n) {
  const char* begin = p;
  auto digit = [&] { return p < end && *p >= '0' && *p <= '9'; };
  bool negative = *p == '-';
  if (negative) ++p;
  if (!digit()) return nullptr;
  if (*p == '0') {
    ++p;
  } else {
    while (digit()) ++p;
  }
  const char* int_end = p;
  bool integer = true;
  if (p < end && *p == '.') {
    ++p;
    if (!digit()) return nullptr;
    while (digit()) ++p;
    integer = false;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    ++p;
    if (p < end && (*p == '+' || *p == '-')) ++p;
    if (!digit()) return nullptr;
    while (digit()) ++p;
    integer = false;
  }
  if (integer) {
    uint64_t v = 0;
    bool fits = true;
    // (Overflow told by the multiply and add themselves: a division per digit to foresee it
    // cost more than the rest of the number.)
    for (const char* d = begin + negative; d < int_end && fits; ++d) {
      fits = !__builtin_mul_overflow(v, uint64_t{10}, &v) && !__builtin_add_overflow(v, uint64_t(*d - '0'), &v);
    }
    if (fits && !negative) {
      n.kind = Number::Kind::kUnsigned;
      n.unsigned_ = v;
      return p;
    }
    if (fits && v <= uint64_t(INT64_MAX) + 1) {
      n.kind = Number::Kind::kInteger;
      n.integer = v == uint64_t(INT64_MAX) + 1 ? INT64_MIN : -int64_t(v);
      return p;
    }
    // Too large for an integer: a double, as nlohmann reads it.
  }
  n.kind = Number::Kind::kFloat;
  auto [ptr, ec] = std::from_chars(begin, p, n.floating);
  if (ec == std::errc::result_out_of_range) {
    // Underflow is a (tiny) number; overflow is refused (nlohmann: "number overflow").
    std::string copy(begin, p);
    n.floating = std::strtod(copy.c_str(), nullptr);
  } else if (ec != std::errc() || ptr != p) {
    return nullptr;
  }
  return std::isfinite(n.floating) ? p : nullptr;
}

}  // namespace detail

bool valid(std::string_view text) {
  struct Accept {
    bool null() { return true; }
    bool boolean(bool) { return true; }
    bool number(const Number&) { return true; }
    bool string(std::string_view, bool) { return true; }
    bool key(std::string_view, bool) { return true; }
    bool start_object() { return true; }
    bool end_object() { return true; }
    bool start_array() { return true; }
    bool end_array() { return true; }
  } accept;
  return scan(text, accept);
}

std::string unescape(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c != '\\' || i + 1 >= raw.size()) {
      out += c;
      continue;
    }
    char e = raw[++i];
    switch (e) {
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        const char* p = raw.data() + i;
        const char* end = raw.data() + raw.size();
        int u = code_unit(p, end);
        if (u < 0) return out;  // (not from a scanned string)
        uint32_t cp = uint32_t(u);
        i += 4;
        if (u >= 0xD800 && u <= 0xDBFF && end - p >= 11) {
          int low = code_unit(p + 6, end);
          if (low >= 0xDC00 && low <= 0xDFFF) {
            cp = 0x10000 + ((uint32_t(u) - 0xD800) << 10) + (uint32_t(low) - 0xDC00);
            i += 6;
          }
        }
        append_utf8(out, cp);
        break;
      }
      default: out += e;  // " \ /
    }
  }
  return out;
}

}  // namespace aicloud::json_scan
