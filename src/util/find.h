// Substring search for short needles in text where the needle's first byte is common: a quoted
// JSON key ("usage") in a JSON document, where string_view::find stops at every quote.
#pragma once
#include <cstddef>
#include <string_view>

namespace aicloud {

// The first position at or after `from` where `needle` occurs in `hay` (npos: none), as
// string_view::find. Candidates are the positions where the needle's second and second-to-last
// bytes both match, tested 16 at a time (SSE2), then compared whole.
size_t find(std::string_view hay, std::string_view needle, size_t from = 0);

// Whether `needle` occurs in `hay`.
inline bool contains(std::string_view hay, std::string_view needle) {
  return find(hay, needle) != std::string_view::npos;
}

}  // namespace aicloud
