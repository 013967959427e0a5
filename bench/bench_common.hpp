// What every KVM benchmark binary does first, and its statistics.
#pragma once

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "app/testbed.hpp"
#include "vmm/kick.hpp"
#include "vmm/kvm.hpp"

namespace kvmscale::bench {

// Blocks the kick and stop signals (before any thread starts) and opens /dev/kvm; null, with a
// message naming the benchmark, where KVM is unusable.
inline std::unique_ptr<vmm::KvmSystem> open_kvm_for_bench(const char* bench_name) {
  vmm::install_kick_signal();
  app::block_stop_signals();
  try {
    return std::make_unique<vmm::KvmSystem>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s needs /dev/kvm: %s\n", bench_name, e.what());
    return nullptr;
  }
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace kvmscale::bench
