// Test-and-test-and-set with exponential backoff: spin reading, then one atomic exchange; back off
// after losing a race. Not FIFO: whoever is running when the lock frees wins, which is why it
// survives preempted waiters better than FIFO locks (and can starve a thread).
#pragma once

#include <atomic>

#include "locks/common.hpp"

namespace kvmscale::locks {

class TtasLock {
 public:
  using Node = NoNode;
  static constexpr uint32_t kMinBackoff = 4, kMaxBackoff = 1024;

  void lock(Node& n) { lock(n, NoPoll{}); }
  template <typename Poll>
  void lock(Node&, Poll&& poll) {
    uint32_t backoff = kMinBackoff;
    for (;;) {
      while (locked_.load(std::memory_order_relaxed)) {
        poll();
        cpu_relax();
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      poll();
      for (uint32_t i = 0; i < backoff; i++) cpu_relax();
      if (backoff < kMaxBackoff) backoff *= 2;
    }
  }
  bool try_lock(Node&) {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock(Node&) { locked_.store(false, std::memory_order_release); }
  bool is_locked() const { return locked_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> locked_{false};
};

}  // namespace kvmscale::locks
