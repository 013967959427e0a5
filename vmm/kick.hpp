// Kicking a host thread out of KVM_RUN without losing the kick.
//
// The kick signal is blocked in every thread except while inside KVM_RUN (KVM_SET_SIGNAL_MASK),
// so it interrupts only guest mode. immediate_exit covers the window just before KVM_RUN, and the
// pending signal is consumed after KVM_RUN returns: otherwise every later KVM_RUN would return
// EINTR at once.
#pragma once

#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>

namespace kvmscale::vmm {

inline constexpr int kKickSignal = SIGUSR1;

// Call once in main() before any thread starts: blocks the kick signal process-wide (threads
// inherit it) and installs a no-op handler so a stray kick can never kill the process.
void install_kick_signal();
// The mask to hand KVM_SET_SIGNAL_MASK: the caller's mask minus the kick signal.
sigset_t run_signal_mask();

// One per thread that enters KVM_RUN; it may outlive the thread (kick() signals only a thread
// that is inside enter()..leave(), hence alive).
class Kicker {
 public:
  // The thread that will call enter()/leave(); call before its first enter().
  void bind_current_thread() { thread_ = pthread_self(); }
  // Owning thread, around KVM_RUN.
  void enter(kvm_run* run);
  // Returns true if a kick arrived since the last leave().
  bool leave(kvm_run* run);
  // Any thread. Safe to call while the owner is alive.
  void kick();
  bool pending() const { return pending_.load(std::memory_order_acquire); }

 private:
  pthread_t thread_{};
  std::atomic<kvm_run*> current_{nullptr};
  std::atomic<bool> pending_{false};
};

}  // namespace kvmscale::vmm
