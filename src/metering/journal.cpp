#include "metering/journal.h"

#include <array>
#include <cstring>

namespace aicloud::journal {

namespace {

constexpr uint32_t kMagic = 0x31475355;  // "USG1"
constexpr size_t kHeader = 4 + 8 + 4 + 4;
constexpr uint32_t kMaxPayload = 1 << 20;

}  // namespace

// Eight bytes per step through eight tables (slice-by-8) rather than one: the journal checksums
// every usage record twice, when it is written and when it is folded into the store.
uint32_t crc32(std::string_view data, uint32_t crc) {
  static const auto t = [] {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
      for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
    }
    return t;
  }();
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

namespace {

// Little-endian, at p.
template <class T>
void put_at(char* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = char(uint8_t(uint64_t(v) >> (8 * i)));
}
template <class T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  put_at(b, v);
  out.append(b, sizeof(T));
}
void put_str(std::string& out, const std::string& s) {
  put<uint32_t>(out, uint32_t(s.size()));
  out += s;
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
  size_t start = out.size();
  out.resize(start + kHeader);
  put<int64_t>(out, r.ts_ms);
  for (const std::string* s : {&r.org_id, &r.project_id, &r.api_key_id, &r.model, &r.deployment_id, &r.region,
                               &r.endpoint, &r.request_id}) {
    put_str(out, *s);
  }
  for (int64_t v : {r.input_tokens, r.output_tokens, r.cached_tokens, r.latency_ms, int64_t(r.status)}) put<int64_t>(out, v);
  uint32_t len = uint32_t(out.size() - start - kHeader);
  char* head = out.data() + start;  // (written in place: a string for it was an allocation per record)
  put_at<uint32_t>(head, kMagic);
  put_at<uint64_t>(head + 4, segment);
  put_at<uint32_t>(head + 12, len);
  uint32_t crc = crc32(std::string_view(head + 4, 12));
  crc = crc32(std::string_view(out).substr(start + kHeader, len), crc);
  put_at<uint32_t>(head + 16, crc);
}

std::vector<UsageRecord> decode(std::string_view data, uint64_t segment) {
  std::vector<UsageRecord> out;
  while (data.size() >= kHeader) {
    Reader h{data.substr(0, kHeader)};
    uint32_t magic = h.get<uint32_t>();
    uint64_t seg = h.get<uint64_t>();
    uint32_t len = h.get<uint32_t>();
    uint32_t crc = h.get<uint32_t>();
    if (magic != kMagic || seg != segment || len > kMaxPayload || data.size() - kHeader < len) break;
    if (crc32(data.substr(kHeader, len), crc32(data.substr(4, 12))) != crc) break;
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
