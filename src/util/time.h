// Wall-clock helpers. Objects carry created_at in unix seconds (OpenAI's convention).
#pragma once
#include <cstdint>

namespace aicloud {
int64_t now_unix();
int64_t now_ms();
int64_t now_us_monotonic();
}  // namespace aicloud
