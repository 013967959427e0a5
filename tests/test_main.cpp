// Test main: the kick and stop signals must be blocked before any thread exists, as in kvmscale.
#include <gtest/gtest.h>

#include "app/testbed.hpp"
#include "vmm/kick.hpp"

int main(int argc, char** argv) {
  kvmscale::vmm::install_kick_signal();
  kvmscale::app::block_stop_signals();
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
