// Boost's assertion handler for the fuzz targets.
#include <cstdio>
#include <cstdlib>
#include <string_view>

// Boost's assertions stay on (BOOST_ENABLE_ASSERT_HANDLER, set by fuzz/CMakeLists.txt) and
// abort, except one that is known to be wrong: Beast before Boost 1.86 asserts that a chunked
// body's last chunk is resumed with at least 5 bytes buffered, while "0\r\n" then "\r" is a
// legal way for it to arrive (boostorg/beast#2861). Release builds (NDEBUG) do not assert, and
// the code after it handles the case.
namespace boost {
void assertion_failed(char const* expr, char const* function, char const* file, long line) {
  if (std::string_view(expr) == "n >= 5" && std::string_view(file).ends_with("http/impl/basic_parser.ipp")) return;
  std::fprintf(stderr, "%s:%ld: %s: Assertion '%s' failed.\n", file, line, function, expr);
  std::abort();
}
void assertion_failed_msg(char const* expr, char const* msg, char const* function, char const* file, long line) {
  std::fprintf(stderr, "%s:%ld: %s: Assertion '%s' failed: %s\n", file, line, function, expr, msg);
  std::abort();
}
}  // namespace boost
