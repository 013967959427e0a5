#pragma once
#include <cstdint>

#include "locks/clock.hpp"

namespace kvmscale {
// The single time base of every timestamp in a run record: CLOCK_MONOTONIC in ns, or the
// simulation's virtual time on a thread that installed it (locks/clock.hpp).
inline uint64_t now_ns() { return locks::clock_ns(); }
}  // namespace kvmscale
