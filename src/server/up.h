// `aicloud up`: the embedded default. Starts `aicloud server` and a local `aicloud agent` as child
// processes of this one, sets up what a first run needs (region, zone, the node's join, a model,
// an organization "default" with a project key, a deployment of the model), waits until the
// model answers and prints how to use it; then supervises both children and stops them, and
// the model's engine processes, on Ctrl-C or SIGTERM. Everything is kept in one data dir, so
// that a second `aicloud up` on it reuses the key, the model and the deployment.
#pragma once

namespace aicloud {
// argv[0] is "up". Returns the process exit code.
int up_command(int argc, char** argv);
}  // namespace aicloud
