#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "vmm/kick.hpp"

using kvmscale::vmm::Kicker;
using kvmscale::vmm::kKickSignal;

namespace {
bool kick_signal_pending() {
  sigset_t p;
  sigpending(&p);
  return sigismember(&p, kKickSignal);
}
}  // namespace

TEST(Kicker, KickBeforeEntryBecomesImmediateExit) {
  Kicker k;
  k.bind_current_thread();
  kvm_run run{};
  k.kick();
  k.enter(&run);
  EXPECT_EQ(run.immediate_exit, 1);
  EXPECT_TRUE(k.leave(&run));
  EXPECT_EQ(run.immediate_exit, 0);
  k.enter(&run);
  EXPECT_EQ(run.immediate_exit, 0) << "a consumed kick must not fire again";
  EXPECT_FALSE(k.leave(&run));
}

TEST(Kicker, KickDuringRunSignalsAndLeaveDrainsIt) {
  Kicker k;
  k.bind_current_thread();
  kvm_run run{};
  k.enter(&run);
  std::thread([&] { k.kick(); }).join();
  EXPECT_EQ(run.immediate_exit, 1);
  EXPECT_TRUE(kick_signal_pending()) << "the kick signal stays pending while blocked";
  EXPECT_TRUE(k.leave(&run));
  EXPECT_FALSE(kick_signal_pending()) << "leave() must consume it or KVM_RUN would spin on EINTR";
}

TEST(Kicker, KickOutsideRunSendsNoSignal) {
  Kicker k;
  k.bind_current_thread();
  k.kick();
  EXPECT_FALSE(kick_signal_pending());
  EXPECT_TRUE(k.pending());
}
