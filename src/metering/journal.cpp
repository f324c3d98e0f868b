#include "metering/journal.h"

#include <array>
#include <bit>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace aicloud::journal {

namespace {

// Frames of version 1 were checksummed with CRC-32; version 2's with CRC-32C, which the CPU
// computes (SSE4.2) eight bytes an instruction. A journal left by an older build still folds.
constexpr uint32_t kMagicV1 = 0x31475355;  // "USG1"
constexpr uint32_t kMagicV2 = 0x32475355;  // "USG2"
constexpr size_t kHeader = 4 + 8 + 4 + 4;
constexpr uint32_t kMaxPayload = 1 << 20;

// Slice-by-8 tables of a reflected CRC polynomial: eight bytes per step rather than one.
using Tables = std::array<std::array<uint32_t, 256>, 8>;
Tables make_tables(uint32_t poly) {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? poly ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
  return t;
}

uint32_t sliced(const Tables& t, std::string_view data, uint32_t crc) {
  auto p = reinterpret_cast<const uint8_t*>(data.data());
  size_t n = data.size();
  crc = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint32_t lo = crc ^ (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24);
    uint32_t hi = uint32_t(p[4]) | uint32_t(p[5]) << 8 | uint32_t(p[6]) << 16 | uint32_t(p[7]) << 24;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][hi & 0xff] ^
          t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
  }
  for (; n > 0; ++p, --n) crc = t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(std::string_view data, uint32_t crc) {
  const char* p = data.data();
  size_t n = data.size();
  uint64_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = uint32_t(c);
  for (; n > 0; ++p, --n) c32 = _mm_crc32_u8(c32, uint8_t(*p));
  return ~c32;
}
#endif

}  // namespace

uint32_t crc32(std::string_view data, uint32_t crc) {
  static const Tables t = make_tables(0xEDB88320u);
  return sliced(t, data, crc);
}

uint32_t crc32c_portable(std::string_view data, uint32_t crc) {
  static const Tables t = make_tables(0x82F63B78u);
  return sliced(t, data, crc);
}

uint32_t crc32c(std::string_view data, uint32_t crc) {
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32c_sse42(data, crc);
#endif
  return crc32c_portable(data, crc);
}

namespace {

// Little-endian, at p; advances p.
template <class T>
void put(char*& p, T v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof(T));
  } else {
    for (size_t i = 0; i < sizeof(T); ++i) p[i] = char(uint8_t(uint64_t(v) >> (8 * i)));
  }
  p += sizeof(T);
}
void put_str(char*& p, const std::string& s) {
  put<uint32_t>(p, uint32_t(s.size()));
  std::memcpy(p, s.data(), s.size());
  p += s.size();
}

// Reads from a bounded buffer; any overrun marks the reader bad instead of reading past it.
struct Reader {
  std::string_view d;
  bool ok = true;
  template <class T>
  T get() {
    if (d.size() < sizeof(T)) return ok = false, T{};
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(uint8_t(d[i])) << (8 * i);
    d.remove_prefix(sizeof(T));
    return T(v);
  }
  std::string str() {
    uint32_t n = get<uint32_t>();
    if (!ok || d.size() < n) return ok = false, std::string();
    std::string s(d.substr(0, n));
    d.remove_prefix(n);
    return s;
  }
};

}  // namespace

void encode(const UsageRecord& r, uint64_t segment, std::string& out) {
  const std::string* strs[] = {&r.org_id,        &r.project_id, &r.api_key_id, &r.model,
                               &r.deployment_id, &r.region,     &r.endpoint,   &r.request_id};
  const int64_t nums[] = {r.input_tokens, r.output_tokens, r.cached_tokens, r.latency_ms, int64_t(r.status)};
  size_t len = 8 + std::size(nums) * 8;
  for (const std::string* s : strs) len += 4 + s->size();
  // Sized once and written through a pointer: appending field by field was most of the cost.
  size_t start = out.size();
  out.resize(start + kHeader + len);
  char* const head = out.data() + start;
  char* p = head;
  put<uint32_t>(p, kMagicV2);
  put<uint64_t>(p, segment);
  put<uint32_t>(p, uint32_t(len));
  p += 4;  // the checksum, below
  put<int64_t>(p, r.ts_ms);
  for (const std::string* s : strs) put_str(p, *s);
  for (int64_t v : nums) put<int64_t>(p, v);
  char* crc_at = head + 16;
  put<uint32_t>(crc_at, crc32c(std::string_view(head + kHeader, len), crc32c(std::string_view(head + 4, 12))));
}

std::vector<UsageRecord> decode(std::string_view data, uint64_t segment) {
  std::vector<UsageRecord> out;
  while (data.size() >= kHeader) {
    Reader h{data.substr(0, kHeader)};
    uint32_t magic = h.get<uint32_t>();
    uint64_t seg = h.get<uint64_t>();
    uint32_t len = h.get<uint32_t>();
    uint32_t crc = h.get<uint32_t>();
    if ((magic != kMagicV2 && magic != kMagicV1) || seg != segment || len > kMaxPayload || data.size() - kHeader < len) {
      break;
    }
    auto sum = magic == kMagicV2 ? crc32c : crc32;
    if (sum(data.substr(kHeader, len), sum(data.substr(4, 12), 0)) != crc) break;
    Reader p{data.substr(kHeader, len)};
    UsageRecord r;
    r.ts_ms = p.get<int64_t>();
    for (std::string* s : {&r.org_id, &r.project_id, &r.api_key_id, &r.model, &r.deployment_id, &r.region,
                           &r.endpoint, &r.request_id}) {
      *s = p.str();
    }
    for (int64_t* v : {&r.input_tokens, &r.output_tokens, &r.cached_tokens, &r.latency_ms}) *v = p.get<int64_t>();
    r.status = int(p.get<int64_t>());
    if (!p.ok) break;  // a checksummed frame that does not parse: written by another version
    out.push_back(std::move(r));
    data.remove_prefix(kHeader + len);
  }
  return out;
}

}  // namespace aicloud::journal
