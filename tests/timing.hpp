// Cost-does-not-grow tests time a step at two sizes and compare. On a shared, noisy host the
// least disturbed of a few rounds is the figure to trust.
#pragma once

#include <algorithm>
#include <chrono>

namespace kvmscale::test {

// Nanoseconds per call of `step` (called `calls` times in a row), best of `rounds`.
template <class Step>
double best_ns_per_call(int rounds, int calls, Step&& step) {
  double best = 1e18;
  for (int round = 0; round < rounds; round++) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; i++) step(i);
    const std::chrono::duration<double, std::nano> dt = std::chrono::steady_clock::now() - t0;
    best = std::min(best, dt.count() / calls);
  }
  return best;
}

}  // namespace kvmscale::test
