#pragma once
#include <time.h>

#include <cstdint>

namespace kvmscale {
// CLOCK_MONOTONIC in ns: the single time base of every timestamp in a run record.
inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace kvmscale
