#include "util/ids.h"

#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace aicloud {

static constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

std::string random_base62(size_t n) {
  std::string out;
  out.reserve(n);
  unsigned char buf[64];
  while (out.size() < n) {
    if (RAND_bytes(buf, sizeof buf) != 1) throw std::runtime_error("RAND_bytes failed");
    for (unsigned char b : buf) {
      if (b >= 248) continue;  // 248 = 4*62: keeps the distribution uniform
      out.push_back(kAlphabet[b % 62]);
      if (out.size() == n) break;
    }
  }
  return out;
}

std::string new_id(std::string_view prefix) { return std::string(prefix) + random_base62(24); }

std::string new_request_id() {
  // "req_" and 32 hex digits, as OpenAI's: 128 bits of xorshift64* over a per-thread random seed
  // (2^64 period). A request id names a request in logs and traces; it is no secret, so a fast
  // generator seeded from the OS's is enough.
  thread_local uint64_t state = [] {
    uint64_t s = 0;
    while (s == 0) {
      if (RAND_bytes(reinterpret_cast<unsigned char*>(&s), sizeof s) != 1) throw std::runtime_error("RAND_bytes failed");
    }
    return s;
  }();
  // Two hex digits per byte from a table: a digit at a time was most of the id's cost.
  static constexpr auto kPairs = [] {
    std::array<char, 512> t{};
    constexpr char kHex[] = "0123456789abcdef";
    for (int b = 0; b < 256; ++b) {
      t[size_t(2 * b)] = kHex[b & 15];  // low nibble first, as the id has always been written
      t[size_t(2 * b + 1)] = kHex[b >> 4];
    }
    return t;
  }();
  char out[36] = {'r', 'e', 'q', '_'};
  for (int half = 0; half < 2; ++half) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    uint64_t r = state * 0x2545F4914F6CDD1DULL;
    for (int i = 0; i < 8; ++i, r >>= 8) std::memcpy(out + 4 + half * 16 + 2 * i, &kPairs[size_t(2 * (r & 255))], 2);
  }
  return std::string(out, sizeof out);
}

}  // namespace aicloud
