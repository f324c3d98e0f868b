#include "util/ids.h"

#include <openssl/rand.h>

#include <cstdint>
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
  // xorshift64* over a per-thread random seed: 2^64 period, 20 characters of ~5.95 bits each.
  thread_local uint64_t state = [] {
    uint64_t s = 0;
    while (s == 0) {
      if (RAND_bytes(reinterpret_cast<unsigned char*>(&s), sizeof s) != 1) throw std::runtime_error("RAND_bytes failed");
    }
    return s;
  }();
  std::string out = "req_";
  out.reserve(24);
  while (out.size() < 24) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    uint64_t r = state * 0x2545F4914F6CDD1DULL;
    for (int i = 0; i < 10 && out.size() < 24; ++i, r /= 62) out.push_back(kAlphabet[r % 62]);
  }
  return out;
}

}  // namespace aicloud
