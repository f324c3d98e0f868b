// `aicloud agent`: one per node. Joins the server with a join token (once; the node credential
// it receives is kept in the work dir), reports the node's real CPU, memory and GPUs, and
// heartbeats. Learns its assignments by long-poll (GET /agent/v1/assignments?wait=&after=: the
// server answers as soon as they change), runs them (src/agent/executor.h), probes services'
// health checks and restarts failing ones in place (health.h), runs execs inside instances, and
// ships logs and output about twice a second. Survives server restarts and dropped connections
// by retrying with backoff (at least once per heartbeat interval); a restarted agent re-adopts
// the workloads still running under its work dir.
#pragma once

namespace aicloud {
// argv[0] is "agent". Returns the process exit code.
int agent_command(int argc, char** argv);
}  // namespace aicloud
