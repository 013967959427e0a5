// Spin, then yield, then park: for hosts where spinning threads outnumber cores. Spinning a
// bounded time catches short critical sections of running holders; yielding lets a preempted
// holder run; parking on a futex stops burning CPU at all. Not FIFO. The state word follows
// Drepper's "Futexes are tricky" mutex: 0 free, 1 locked, 2 locked with (possible) sleepers.
#pragma once

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

#include "locks/common.hpp"

namespace kvmscale::locks {

class SpinYieldLock {
 public:
  using Node = NoNode;
  static constexpr int kSpins = 512, kYields = 8;

  void lock(Node&) {
    uint32_t c = 0;
    if (state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
    for (int i = 0; i < kSpins; i++) {
      cpu_relax();
      c = 0;
      if (state_.load(std::memory_order_relaxed) == 0 &&
          state_.compare_exchange_strong(c, 1, std::memory_order_acquire))
        return;
    }
    for (int i = 0; i < kYields; i++) {
      sched_yield();
      c = 0;
      if (state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
    }
    // Park. From here on we may sleep, so the word says "2: someone may be sleeping".
    c = state_.exchange(2, std::memory_order_acquire);
    while (c != 0) {
      futex(FUTEX_WAIT_PRIVATE, 2);
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
      futex(FUTEX_WAKE_PRIVATE, 1);
    }
  }
  bool is_locked() const { return state_.load(std::memory_order_relaxed) != 0; }

 private:
  void futex(int op, uint32_t val) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&state_), op, val, nullptr, nullptr, 0);
  }
  std::atomic<uint32_t> state_{0};
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
};

}  // namespace kvmscale::locks
