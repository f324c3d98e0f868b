// Asking the person at the terminal for what a command needs (login's email and password).
#pragma once
#include <string>

namespace aicloud::cli {

// Reads one line. On a terminal it shows "label: " on stderr and, when echo is false, hides
// what is typed; when stdin is not a terminal (a pipe, a script) it reads the line silently.
// Throws CliError at end of input.
std::string read_line(const std::string& label, bool echo);

}  // namespace aicloud::cli
