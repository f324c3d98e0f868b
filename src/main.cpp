// aicloud: one binary for the server, the single-machine cloud, and the CLI.
#include <cstring>
#include <iostream>

#include "agent/agent.h"
#include "agent/executor.h"
#include "cli/cli.h"
#include "server/server_main.h"

int main(int argc, char** argv) {
  if (argc >= 2 && (std::strcmp(argv[1], "server") == 0 || std::strcmp(argv[1], "up") == 0)) {
    return aicloud::server_command(argc - 1, argv + 1);
  }
  if (argc >= 2 && std::strcmp(argv[1], "agent") == 0) return aicloud::agent_command(argc - 1, argv + 1);
  // Internal: the supervisor the agent starts for each workload process.
  if (argc >= 2 && std::strcmp(argv[1], "agent-exec") == 0) return aicloud::agent_exec_command(argc - 1, argv + 1);
  return aicloud::cli_main(argc, argv);
}
