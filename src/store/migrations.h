// Versioned schema migrations for the SQLite store, applied in order at start.
// The schema version lives in SQLite's user_version; a file newer than this binary is refused.
#pragma once
#include <string>
#include <vector>

namespace aicloud {
// migrations()[i] takes the schema from version i to i+1.
const std::vector<std::string>& sqlite_migrations();
}  // namespace aicloud
