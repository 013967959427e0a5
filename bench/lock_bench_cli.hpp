// `kvmscale bench-locks`: the lock benchmark as a subcommand of the kvmscale binary.
#pragma once

#include <memory>

#include "app/cli.hpp"

namespace kvmscale::bench {

std::unique_ptr<app::Subcommand> bench_locks_subcommand();

}  // namespace kvmscale::bench
