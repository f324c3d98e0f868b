// Identifiers and secrets: random, URL-safe, with a readable prefix ("org-", "proj_", "sk-proj-").
#pragma once
#include <string>
#include <string_view>

namespace aicloud {

// n characters of base62 from the OS's CSPRNG (OpenSSL RAND_bytes, rejection-sampled: no bias).
std::string random_base62(size_t n);

// prefix + 24 random base62 characters (~143 bits): unguessable, so ids never leak existence.
std::string new_id(std::string_view prefix);

// "req_" + 32 hex digits (as OpenAI's) for x-request-id: unique, not secret, so drawn from a per-thread
// generator (seeded from the CSPRNG) rather than RAND_bytes, which cost 4% of a proxied request.
std::string new_request_id();

}  // namespace aicloud
