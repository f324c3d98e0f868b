// How much slower this build runs than the release build the timing bounds in tests are written
// for, so that a bound on how promptly something happens is scaled rather than dropped. Under
// AddressSanitizer instrumented code takes 2-3 times as long, and every instrumented process that
// starts (an agent's workload supervisor, for each workload and exec) maps its shadow memory and
// runs a leak check at exit: an exec that takes 60 ms in the release build takes 700-1000 ms.
#pragma once

namespace aicloud::test {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr int kTimeScale = 5;
#else
inline constexpr int kTimeScale = 1;
#endif

}  // namespace aicloud::test
