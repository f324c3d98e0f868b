#include "util/time.h"

#include <chrono>

namespace aicloud {
using namespace std::chrono;
int64_t now_unix() { return duration_cast<seconds>(system_clock::now().time_since_epoch()).count(); }
int64_t now_ms() { return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count(); }
int64_t now_us_monotonic() {
  return duration_cast<microseconds>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace aicloud
