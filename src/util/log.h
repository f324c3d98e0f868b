// Process-wide structured logging (spdlog). One JSON line per request comes from the API layer.
#pragma once
#include <spdlog/spdlog.h>

#include <string>

namespace aicloud {
// level: trace|debug|info|warn|error|off. Logs go to stderr through an async queue so a
// request never waits on the terminal.
void init_logging(const std::string& level);
}  // namespace aicloud
