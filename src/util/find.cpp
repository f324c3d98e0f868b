#include "util/find.h"

#include <emmintrin.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace aicloud {

namespace {

constexpr size_t npos = std::string_view::npos;

// Whether the needle starts at p. A byte loop, not memcmp: a call in the block loops below would
// make the compiler keep their vectors on the stack, reloaded every block.
inline bool at(const char* p, std::string_view needle) {
  for (size_t k = 0; k < needle.size(); ++k) {
    if (p[k] != needle[k]) return false;
  }
  return true;
}

// Candidates are starts where the needle's bytes at a = 1 and b = n - 2 both match: the bytes
// just inside its ends, a quoted key's own letters rather than its quotes. Each block loop tests
// starts i.. while a whole block of them is at most `last` (the last start the needle fits at),
// so its loads end at p[last + b + 0] at most, inside the haystack. Not found, it leaves `from`
// where it stopped, for the next (narrower) loop.

#if defined(__x86_64__)
// 32 starts at a time: a stream's usage search runs over every relayed byte.
__attribute__((target("avx2"))) size_t find_avx2(const char* p, size_t& from, size_t last, std::string_view needle) {
  const size_t n = needle.size(), a = 1, b = n - 2;
  const __m256i va = _mm256_set1_epi8(needle[a]), vb = _mm256_set1_epi8(needle[b]);
  size_t i = from;  // (a local: kept in a register, where `from` would be stored every block)
  for (; i + 31 <= last; i += 32) {
    __m256i x = _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + a)), va);
    __m256i y = _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + b)), vb);
    for (unsigned m = unsigned(_mm256_movemask_epi8(_mm256_and_si256(x, y))); m != 0; m &= m - 1) {
      size_t start = i + unsigned(__builtin_ctz(m));
      if (at(p + start, needle)) return start;
    }
  }
  from = i;
  return npos;
}
#endif

size_t find_sse2(const char* p, size_t& from, size_t last, std::string_view needle) {
  const size_t n = needle.size(), a = 1, b = n - 2;
  const __m128i va = _mm_set1_epi8(needle[a]), vb = _mm_set1_epi8(needle[b]);
  size_t i = from;
  for (; i + 15 <= last; i += 16) {
    __m128i x = _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + a)), va);
    __m128i y = _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + b)), vb);
    for (unsigned m = unsigned(_mm_movemask_epi8(_mm_and_si128(x, y))); m != 0; m &= m - 1) {
      size_t start = i + unsigned(__builtin_ctz(m));
      if (at(p + start, needle)) return start;
    }
  }
  from = i;
  return npos;
}

}  // namespace

size_t find(std::string_view hay, std::string_view needle, size_t from, FindWidth width) {
  const size_t n = needle.size();
  if (from > hay.size() || n > hay.size() - from) return npos;
  if (n < 4) return hay.find(needle, from);
  const char* p = hay.data();
  const size_t last = hay.size() - n;
  size_t i = from;
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && width == FindWidth::kWidest) {
    if (size_t found = find_avx2(p, i, last, needle); found != npos) return found;
  }
#endif
  if (width != FindWidth::kBytes) {
    if (size_t found = find_sse2(p, i, last, needle); found != npos) return found;
  }
  for (; i <= last; ++i) {
    if (p[i + 1] == needle[1] && memcmp(p + i, needle.data(), n) == 0) return i;
  }
  return npos;
}

}  // namespace aicloud
