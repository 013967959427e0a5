// The `run` flags as typed and their parsing into a RunConfig (vmm/run_flags.cpp).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "vmm/config.hpp"

namespace kvmscale::vmm {

// Flags as typed, before unit parsing: so that the error names the flag.
struct RunFlags {
  std::string mem = "16M", duration = "30s", lock_profile = "on", tslice = "30ms",
              ratelimit = "1ms", pod_granule = "4K";
  std::vector<std::string> guest_args;
  bool force = false;  // overwrite an existing --out FILE.json
  std::string guest;   // empty: not given
};

// Declares every `run` flag on `cmd`, writing into `cfg` and `f`.
void add_run_flags(CLI::App& cmd, RunConfig& cfg, RunFlags& f);
// After parsing: units, guest lists and their cross-checks. Throws ConfigError.
void finish_run_flags(RunConfig& cfg, const RunFlags& f);

}  // namespace kvmscale::vmm
