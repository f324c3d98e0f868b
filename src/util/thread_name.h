// Names the calling thread for `top -H`, `ps -L`, perf and gdb, which otherwise show every thread
// of the server as "aicloud". Linux keeps 15 bytes of a name.
#pragma once
#include <pthread.h>

#include <string>

namespace aicloud {

inline void name_this_thread(const std::string& name) { pthread_setname_np(pthread_self(), name.substr(0, 15).c_str()); }

}  // namespace aicloud
