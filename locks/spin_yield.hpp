// Spin, then yield, then park: for hosts where spinning threads outnumber cores. Spinning a
// bounded time catches short critical sections of running holders; yielding lets a preempted
// holder run; parking on a futex stops burning CPU at all. Not FIFO. The state word follows
// Drepper's "Futexes are tricky" mutex: 0 free, 1 locked, 2 locked with (possible) sleepers.
#pragma once

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

#include "locks/common.hpp"

namespace kvmscale::locks {

class SpinYieldLock {
 public:
  using Node = NoNode;
  static constexpr int kSpins = 512, kYields = 8;

  void lock(Node& n) { lock(n, NoPoll{}); }
  // A polling waiter parks for at most kPollParkNs at a time, then polls and parks again.
  static constexpr long kPollParkNs = 50'000;
  template <typename Poll>
  void lock(Node&, Poll&& poll) {
    uint32_t c = 0;
    if (state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
    for (int i = 0; i < kSpins; i++) {
      if constexpr (kPolls<Poll>) {
        if (i % 16 == 0) poll();
      }
      cpu_relax();
      c = 0;
      if (state_.load(std::memory_order_relaxed) == 0 &&
          state_.compare_exchange_strong(c, 1, std::memory_order_acquire))
        return;
    }
    for (int i = 0; i < kYields; i++) {
      poll();
      sched_yield();
      c = 0;
      if (state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
    }
    // Park. From here on we may sleep, so the word says "2: someone may be sleeping".
    c = state_.exchange(2, std::memory_order_acquire);
    while (c != 0) {
      poll();
      futex_wait(2, kPolls<Poll> ? kPollParkNs : 0);
      c = state_.exchange(2, std::memory_order_acquire);
    }
  }
  bool try_lock(Node&) {
    uint32_t c = 0;
    return state_.compare_exchange_strong(c, 1, std::memory_order_acquire);
  }
  void unlock(Node&) {
    // 1 -> 0 needs no wake. From 2 someone may sleep: free the word, then wake one.
    if (state_.fetch_sub(1, std::memory_order_release) != 1) {
      state_.store(0, std::memory_order_release);
      syscall(SYS_futex, word(), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
  }
  bool is_locked() const { return state_.load(std::memory_order_relaxed) != 0; }

 private:
  uint32_t* word() { return reinterpret_cast<uint32_t*>(&state_); }
  // Sleeps while the word is `val`, at most timeout_ns (0: no limit).
  void futex_wait(uint32_t val, long timeout_ns) {
    timespec ts{0, timeout_ns};
    syscall(SYS_futex, word(), FUTEX_WAIT_PRIVATE, val, timeout_ns ? &ts : nullptr, nullptr, 0);
  }
  std::atomic<uint32_t> state_{0};
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
};

}  // namespace kvmscale::locks
