#include "util/find.h"

#include <emmintrin.h>
#include <string.h>

namespace aicloud {

size_t find(std::string_view hay, std::string_view needle, size_t from) {
  constexpr size_t npos = std::string_view::npos;
  const size_t n = needle.size();
  if (from > hay.size() || n > hay.size() - from) return npos;
  if (n < 4) return hay.find(needle, from);
  // The bytes just inside the needle's ends: a quoted key's own letters, not its quotes.
  const size_t a = 1, b = n - 2;
  const char* p = hay.data();
  const size_t last = hay.size() - n;  // the last position the needle can start at
  const __m128i va = _mm_set1_epi8(needle[a]), vb = _mm_set1_epi8(needle[b]);
  size_t i = from;
  // Starts i..i+15, all at most `last`: the loads reach p[last + b + 0] at most, inside hay.
  for (; i + 15 <= last; i += 16) {
    __m128i x = _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + a)), va);
    __m128i y = _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + b)), vb);
    for (unsigned m = unsigned(_mm_movemask_epi8(_mm_and_si128(x, y))); m != 0; m &= m - 1) {
      size_t at = i + unsigned(__builtin_ctz(m));
      if (memcmp(p + at, needle.data(), n) == 0) return at;
    }
  }
  for (; i <= last; ++i) {
    if (p[i + a] == needle[a] && memcmp(p + i, needle.data(), n) == 0) return i;
  }
  return npos;
}

}  // namespace aicloud
