// Shared by the integration tests: skip without /dev/kvm, run a config, spawn the binary.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "app/config.hpp"
#include "app/testbed.hpp"
#include "vmm/kvm.hpp"

namespace kvmscale::test {

// Non-empty: why KVM tests must skip here.
inline std::string kvm_unusable_reason() {
  try {
    vmm::KvmSystem kvm;
    return {};
  } catch (const std::exception& e) {
    return std::string("/dev/kvm is not usable here (") + e.what() + "); skipping KVM test";
  }
}

#define SKIP_WITHOUT_KVM()                                                       \
  do {                                                                           \
    if (std::string why = ::kvmscale::test::kvm_unusable_reason(); !why.empty()) \
      GTEST_SKIP() << why;                                                       \
  } while (0)

inline app::RunConfig small_config(const std::string& guest, uint32_t vms = 1, uint32_t vcpus = 2) {
  app::RunConfig c;
  c.guest = guest;
  c.vms = vms;
  c.vcpus = vcpus;
  c.mem = 8ull << 20;
  c.duration_ns = 20ull * 1000000000ull;
  return c;
}

struct Spawned {
  int exit_code = -1;
  std::string out, err;
};
// Runs argv in its own process group; sends SIGINT after sigint_after_ms if > 0. Never hangs
// past timeout_ms (SIGKILL to the group, so nothing it started outlives the test).
// sigint_ignored: the child starts with SIGINT ignored.
Spawned spawn(const std::vector<std::string>& argv, int sigint_after_ms = 0,
              int timeout_ms = 120000, bool sigint_ignored = false);

}  // namespace kvmscale::test
