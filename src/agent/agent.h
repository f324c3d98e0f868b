// `aicloud agent`: one per node. Joins the server with a join token (once; the node credential
// it receives is kept in the work dir), reports the node's real CPU, memory and GPUs, and
// heartbeats. Survives server restarts and dropped connections by retrying with backoff.
#pragma once

namespace aicloud {
// argv[0] is "agent". Returns the process exit code.
int agent_command(int argc, char** argv);
}  // namespace aicloud
