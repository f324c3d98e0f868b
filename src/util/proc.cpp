#include "util/proc.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace aicloud {

std::string process_cmdline(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/cmdline";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      out.clear();  // gone mid-read
      break;
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

std::vector<pid_t> processes_mentioning(std::string_view needle) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (!proc) return out;
  while (dirent* e = ::readdir(proc)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9' || std::strspn(e->d_name, "0123456789") != std::strlen(e->d_name)) {
      continue;
    }
    pid_t pid = pid_t(std::atol(e->d_name));
    if (pid == ::getpid()) continue;
    if (process_cmdline(pid).find(needle) != std::string::npos) out.push_back(pid);
  }
  ::closedir(proc);
  return out;
}

}  // namespace aicloud
