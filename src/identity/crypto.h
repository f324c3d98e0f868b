// Cryptographic primitives used for secrets (OpenSSL). Keys and tokens are high-entropy and
// stored as SHA-256; passwords are low-entropy and stored as scrypt.
#pragma once
#include <array>
#include <string>
#include <string_view>

namespace aicloud {

using Sha256 = std::array<unsigned char, 32>;
Sha256 sha256(std::string_view data);
std::string hex(const Sha256& digest);
std::string sha256_hex(std::string_view data);  // hex(sha256(data))
// Constant-time comparison of two equal-length strings (false when the lengths differ).
bool constant_time_equal(std::string_view a, std::string_view b);

// "scrypt$N$r$p$salt_hex$hash_hex"
std::string hash_password(std::string_view password);
bool verify_password(std::string_view password, std::string_view stored);

}  // namespace aicloud
