// The CLI: `aicloud <noun> <verb>`, a client of the HTTP API.
#pragma once

namespace aicloud {
// Returns the process exit code: 0 ok, 1 the server refused or failed, 2 bad usage.
int cli_main(int argc, char** argv);
}  // namespace aicloud
