// Reading other processes from /proc. A process can exit while /proc is being walked: its files
// then fail to read (ESRCH), which a std::ifstream read through istreambuf_iterator turns into an
// uncaught exception (it took test processes down). These read with plain system calls, and a
// process that has gone simply is not there.
#pragma once
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

namespace aicloud {

// The process's argv joined by NUL bytes (as /proc/PID/cmdline holds it); "" when it has gone,
// cannot be read, or is a kernel thread.
std::string process_cmdline(pid_t pid);

// Every process other than this one whose command line contains `needle`.
std::vector<pid_t> processes_mentioning(std::string_view needle);

}  // namespace aicloud
