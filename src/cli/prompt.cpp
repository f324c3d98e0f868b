#include "cli/prompt.h"

#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <iostream>

#include "cli/errors.h"

namespace aicloud::cli {

// Echo is turned back on even when Ctrl-C interrupts a hidden prompt.
static termios g_saved;
static void restore_and_exit(int sig) {
  tcsetattr(STDIN_FILENO, TCSANOW, &g_saved);
  const char nl = '\n';
  (void)!write(STDERR_FILENO, &nl, 1);
  _exit(128 + sig);
}

std::string read_line(const std::string& label, bool echo) {
  bool tty = isatty(STDIN_FILENO);
  bool hide = tty && !echo && tcgetattr(STDIN_FILENO, &g_saved) == 0;
  struct sigaction old_int {}, old_term {};
  if (tty) std::cerr << label << ": " << std::flush;
  if (hide) {
    struct sigaction sa {};
    sa.sa_handler = restore_and_exit;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    termios quiet = g_saved;
    quiet.c_lflag &= ~tcflag_t(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  std::string line;
  bool ok = static_cast<bool>(std::getline(std::cin, line));
  if (hide) {
    tcsetattr(STDIN_FILENO, TCSANOW, &g_saved);
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    std::cerr << '\n';
  }
  if (!ok) throw CliError("no " + label + " given: end of input", kExitUsage);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

}  // namespace aicloud::cli
