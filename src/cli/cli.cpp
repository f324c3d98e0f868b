#include "cli/cli.h"

#include <iostream>

namespace aicloud {
int cli_main(int, char**) {
  std::cerr << "usage: aicloud server|up ...\n";
  return 2;
}
}  // namespace aicloud
