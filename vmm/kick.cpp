#include "vmm/kick.hpp"

#include <time.h>

namespace kvmscale::vmm {

namespace {
void ignore_kick(int) {}
}  // namespace

void install_kick_signal() {
  struct sigaction sa {};
  sa.sa_handler = ignore_kick;
  sigemptyset(&sa.sa_mask);
  sigaction(kKickSignal, &sa, nullptr);
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, kKickSignal);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
}

sigset_t run_signal_mask() {
  sigset_t s;
  pthread_sigmask(SIG_BLOCK, nullptr, &s);
  sigdelset(&s, kKickSignal);
  return s;
}

void Kicker::enter(kvm_run* run) {
  // seq_cst store then load, mirrored in kick(): at least one side sees the other.
  current_.store(run, std::memory_order_seq_cst);
  if (pending_.load(std::memory_order_seq_cst))
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_RELAXED);
}

bool Kicker::leave(kvm_run* run) {
  current_.store(nullptr, std::memory_order_seq_cst);
  __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_RELAXED);
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, kKickSignal);
  timespec zero{0, 0};
  while (sigtimedwait(&s, nullptr, &zero) > 0) {
  }
  return pending_.exchange(false, std::memory_order_acq_rel);
}

void Kicker::kick() {
  pending_.store(true, std::memory_order_seq_cst);
  if (kvm_run* run = current_.load(std::memory_order_seq_cst)) {
    __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_RELAXED);
    pthread_kill(thread_, kKickSignal);
  }
}

}  // namespace kvmscale::vmm
