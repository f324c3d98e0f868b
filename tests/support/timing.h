// How much slower this build runs than the release build the timing bounds in tests are written
// for: AddressSanitizer's instrumented code (and its slower fork and exec) takes about three
// times as long, so a bound on how promptly something happens is scaled rather than dropped.
#pragma once

namespace aicloud::test {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr int kTimeScale = 3;
#else
inline constexpr int kTimeScale = 1;
#endif

}  // namespace aicloud::test
