// The kvmscale command line (CLI11): parses flags into a RunConfig and dispatches subcommands.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace kvmscale::app {

// Exit codes: 0 success, 1 the run failed, 2 bad usage, 130 interrupted by SIGINT/SIGTERM.
inline constexpr int kExitOk = 0, kExitFailure = 1, kExitUsage = 2, kExitInterrupted = 130;

// A subcommand from a layer above the application (study/, bench/). The entry point
// (app/main.cpp) hands them to cli_main, so the CLI never includes those layers.
class Subcommand {
 public:
  virtual ~Subcommand() = default;
  virtual void add_to(CLI::App& app) = 0;
  // Runs the subcommand if the command line selected it; returns -1 if it did not.
  virtual int run_if_selected() = 0;
};

int cli_main(int argc, char** argv, const std::vector<Subcommand*>& more = {});

// Parses `run` flags (e.g. {"--vms", "4", "--pcpu-bind"}) exactly as `kvmscale run` does.
// Throws ConfigError (app/config.hpp) with the offending flag named.
struct RunConfig;
RunConfig parse_run_args(const std::vector<std::string>& args);

}  // namespace kvmscale::app
