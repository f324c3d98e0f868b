#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <string>

#include "cli/commands.h"
#include "cli/errors.h"
#include "models/tiny.h"

namespace aicloud {

namespace cli {
void add_model_commands(CLI::App& app, Flags& f);  // `models import|pull|list|get|delete` (models_commands.cpp)
}

int cli_main(int argc, char** argv) {
  CLI::App app{"aicloud: the command line of an aicloud server (a client of its HTTP API)", "aicloud"};
  cli::Flags flags;
  cli::add_commands(app, flags);
  cli::add_model_commands(app, flags);
  models::add_create_tiny_command(app);  // `models create-tiny` (src/models/tiny.h)
  cli::group_commands(app);
  try {
    app.parse(argc, argv);  // runs the chosen command
    return 0;
  } catch (const CLI::ParseError& e) {
    // CLI11 reports a mistyped command as "A subcommand is required"; name the word instead.
    auto extra = app.remaining();
    if (!extra.empty() && std::string(e.what()).find("subcommand is required") != std::string::npos) {
      std::cerr << "unknown command: " << extra.front() << "\nRun with --help for more information.\n";
      return cli::kExitUsage;
    }
    int rc = app.exit(e);  // help on stdout, or the usage error on stderr
    return rc == 0 ? 0 : cli::kExitUsage;
  } catch (const cli::CliExit& e) {
    return e.exit_code;
  } catch (const cli::CliError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return e.exit_code;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return cli::kExitFailure;
  } catch (...) {
    std::cerr << "error: an unexpected failure\n";
    return cli::kExitFailure;
  }
}

}  // namespace aicloud
