// Substring search for short needles in text where the needle's first byte is common: a quoted
// JSON key ("usage") in a JSON document, where string_view::find stops at every quote.
#pragma once
#include <cstddef>
#include <string_view>

namespace aicloud {

// How many starts find() tests at a time: the widest the CPU has (32 with AVX2, else 16 with
// SSE2), or narrower, for tests of each path.
enum class FindWidth { kWidest, kSse2, kBytes };

// The first position at or after `from` where `needle` occurs in `hay` (npos: none), as
// string_view::find. Candidates are the positions where the needle's second and second-to-last
// bytes both match, tested a block at a time, then compared whole.
size_t find(std::string_view hay, std::string_view needle, size_t from = 0, FindWidth width = FindWidth::kWidest);

// Whether `needle` occurs in `hay`.
inline bool contains(std::string_view hay, std::string_view needle) {
  return find(hay, needle) != std::string_view::npos;
}

}  // namespace aicloud
