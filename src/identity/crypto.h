// Cryptographic primitives used for secrets (OpenSSL). Keys and tokens are high-entropy and
// stored as SHA-256; passwords are low-entropy and stored as scrypt.
#pragma once
#include <string>
#include <string_view>

namespace aicloud {

std::string sha256_hex(std::string_view data);
// Constant-time comparison of two equal-length strings (false when the lengths differ).
bool constant_time_equal(std::string_view a, std::string_view b);

// "scrypt$N$r$p$salt_hex$hash_hex"
std::string hash_password(std::string_view password);
bool verify_password(std::string_view password, std::string_view stored);

}  // namespace aicloud
