// The kvmscale command line (CLI11): parses flags into a RunConfig and dispatches subcommands.
#pragma once

#include <string>
#include <vector>

namespace kvmscale::vmm {

// Exit codes: 0 success, 1 the run failed, 2 bad usage, 130 interrupted by SIGINT/SIGTERM.
inline constexpr int kExitOk = 0, kExitFailure = 1, kExitUsage = 2, kExitInterrupted = 130;

int cli_main(int argc, char** argv);

}  // namespace kvmscale::vmm
