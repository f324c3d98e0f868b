// Reading the line-framed parts of an HTTP/1.x message (a head, trailers, a chunk's size line)
// from bytes that arrive in pieces: shared by the request parser (http/request_parser.h) and the
// upstream answer parser (http/answer_parser.h). Nothing is used until a part is whole: `at` says
// how far the unused bytes have been read, and stays valid while the caller gives the same bytes
// again with more after them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "http/fields.h"

namespace aicloud::http::message_lines {

enum class Status { kWhole, kNeedMore, kBadEnding, kOverLimit, kRefused };

// The longest chunk-size line either parser takes, extensions included.
inline constexpr size_t kChunkLineLimit = 4096;

// The line that starts `at` bytes into rest, without its CRLF; moves `at` past it. A line not
// ended by CRLF is kBadEnding. Past `limit` bytes (counted from rest's start) is kOverLimit,
// whatever the line holds, so that the bytes read at once or in pieces (where the limit is
// reached before the line's end comes) fail alike.
inline Status line(std::string_view rest, size_t& at, size_t limit, std::string_view& out) {
  const char* from = rest.data() + at;
  const void* nl = std::memchr(from, '\n', rest.size() - at);
  if (!nl) return rest.size() > limit ? Status::kOverLimit : Status::kNeedMore;
  size_t len = size_t(static_cast<const char*>(nl) - from);
  at += len + 1;
  if (at > limit) return Status::kOverLimit;
  if (len == 0 || from[len - 1] != '\r') return Status::kBadEnding;
  out = std::string_view(from, len - 1);
  return Status::kWhole;
}

// What a section's reader makes of one of its lines.
enum class Next { kMore, kEnd, kRefused };

// The lines of a head (its start line first) or of trailers, from `at` to the line that ends
// them: on_line(line) takes each and says whether more follow (kMore), the section has ended
// (kEnd: the blank line after the start line) or the line is refused. kWhole: `at` is past the
// section's end.
template <class F>
Status section(std::string_view rest, size_t& at, size_t limit, F&& on_line) {
  for (;;) {
    std::string_view l;
    Status s = line(rest, at, limit, l);
    if (s != Status::kWhole) return s;
    switch (on_line(l)) {
      case Next::kMore: break;
      case Next::kEnd: return Status::kWhole;
      case Next::kRefused: return Status::kRefused;
    }
  }
}

// A chunk's size line (RFC 9112 §7.1): hex digits, then optional whitespace and extensions
// (";name[=value]...", not read; only their bytes are checked). False for anything else, and for
// a size over 2^60 (past any body limit).
inline bool chunk_size(std::string_view line, uint64_t& size) {
  size = 0;
  size_t i = 0;
  for (; i < line.size(); ++i) {
    int d = hex_digit(line[i]);
    if (d < 0) break;
    if (size >> 56) return false;
    size = size * 16 + uint64_t(d);
  }
  size_t digits = i;
  while (i < line.size() && is_ows(line[i])) ++i;
  return digits > 0 && (i == line.size() || line[i] == ';') && value_chars_ok(line.substr(i));
}

}  // namespace aicloud::http::message_lines
