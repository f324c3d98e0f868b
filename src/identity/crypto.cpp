#include "identity/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <sstream>
#include <stdexcept>
#include <vector>

namespace aicloud {
namespace {

std::string to_hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = d[p[i] >> 4];
    s[2 * i + 1] = d[p[i] & 15];
  }
  return s;
}

bool from_hex(std::string_view h, std::vector<unsigned char>& out) {
  if (h.size() % 2) return false;
  out.resize(h.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      char c = h[2 * i + k];
      int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (x < 0) return false;
      v = v * 16 + x;
    }
    out[i] = static_cast<unsigned char>(v);
  }
  return true;
}

// 2^15 * 8 * 128 B = 32 MiB and ~0.1 s per hash: OWASP's scrypt floor is N=2^17 with r=8, p=1;
// we take N=2^15 so that a 2-core control plane is not a login DoS target, and record the
// parameters in each hash so they can be raised without invalidating stored ones.
constexpr uint64_t kN = 1u << 15, kR = 8, kP = 1;
constexpr size_t kSaltLen = 16, kHashLen = 32;

bool scrypt(std::string_view pw, const unsigned char* salt, size_t salt_len, uint64_t n, uint64_t r, uint64_t p,
            unsigned char* out, size_t out_len) {
  return EVP_PBE_scrypt(pw.data(), pw.size(), salt, salt_len, n, r, p, 64ull * 1024 * 1024, out, out_len) == 1;
}

}  // namespace

// Every API call hashes its key. OpenSSL 3 looks the algorithm up by name on each EVP_Digest
// with EVP_sha256() and allocates a context: more time than the hash of a key itself (~2% of
// the gateway's CPU). The algorithm is fetched once; each thread keeps its context.
Sha256 sha256(std::string_view data) {
  static EVP_MD* const md = [] {
    EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (!m) throw std::runtime_error("sha256: the algorithm is not available");
    return m;
  }();
  struct Ctx {
    EVP_MD_CTX* c = EVP_MD_CTX_new();
    ~Ctx() { EVP_MD_CTX_free(c); }
  };
  thread_local Ctx ctx;
  Sha256 out;
  unsigned int len = 0;
  if (!ctx.c || EVP_DigestInit_ex2(ctx.c, md, nullptr) != 1 || EVP_DigestUpdate(ctx.c, data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.c, out.data(), &len) != 1 || len != out.size()) {
    throw std::runtime_error("sha256 failed");
  }
  return out;
}

std::string hex(const Sha256& digest) { return to_hex(digest.data(), digest.size()); }

std::string sha256_hex(std::string_view data) { return hex(sha256(data)); }

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string hash_password(std::string_view password) {
  unsigned char salt[kSaltLen], out[kHashLen];
  if (RAND_bytes(salt, sizeof salt) != 1) throw std::runtime_error("RAND_bytes failed");
  if (!scrypt(password, salt, sizeof salt, kN, kR, kP, out, sizeof out)) throw std::runtime_error("scrypt failed");
  std::ostringstream s;
  s << "scrypt$" << kN << '$' << kR << '$' << kP << '$' << to_hex(salt, sizeof salt) << '$' << to_hex(out, sizeof out);
  return s.str();
}

bool verify_password(std::string_view password, std::string_view stored) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t pos = stored.find('$', start);
    parts.emplace_back(stored.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  if (parts.size() != 6 || parts[0] != "scrypt") return false;
  uint64_t n = 0, r = 0, p = 0;
  try {
    n = std::stoull(parts[1]);
    r = std::stoull(parts[2]);
    p = std::stoull(parts[3]);
  } catch (...) {
    return false;
  }
  std::vector<unsigned char> salt, want;
  if (!from_hex(parts[4], salt) || !from_hex(parts[5], want) || want.empty()) return false;
  std::vector<unsigned char> got(want.size());
  if (!scrypt(password, salt.data(), salt.size(), n, r, p, got.data(), got.size())) return false;
  return CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
}

}  // namespace aicloud
