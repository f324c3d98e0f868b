// `aicloud server` and `aicloud up`: open the store, make sure the operator key exists, serve.
#pragma once

namespace aicloud {
// argv[0] is the subcommand ("server" or "up"). Returns the process exit code.
int server_command(int argc, char** argv);
}  // namespace aicloud
