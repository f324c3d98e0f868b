// How a CLI command fails: a one-line message for stderr and the process exit code.
#pragma once
#include <stdexcept>
#include <string>

namespace aicloud::cli {

inline constexpr int kExitFailure = 1;  // the server refused, failed, or could not be reached
inline constexpr int kExitUsage = 2;    // the command line was wrong

struct CliError : std::runtime_error {
  int exit_code;
  explicit CliError(const std::string& message, int code = kExitFailure)
      : std::runtime_error(message), exit_code(code) {}
};

// Ends the command with this exit code and no message: `instances exec` passes on its command's.
struct CliExit {
  int exit_code;
};

}  // namespace aicloud::cli
