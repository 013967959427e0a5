// Ticket lock, as Xen's spinlock since 4.6: take a ticket, spin until it is served. FIFO.
#pragma once

#include <atomic>

#include "locks/common.hpp"

namespace kvmscale::locks {

class TicketLock {
 public:
  using Node = NoNode;
  template <typename Poll>
  void lock(Node&, Poll&& poll) {
    const uint32_t me = next_.fetch_add(1, std::memory_order_relaxed);
    while (owner_.load(std::memory_order_acquire) != me) {
      poll();
      cpu_relax();
    }
  }
  void lock(Node& n) { lock(n, NoPoll{}); }
  bool try_lock(Node&) {
    // owner never passes next, so reading owner == next and then winning the CAS on next means
    // the lock was free at the CAS.
    uint32_t o = owner_.load(std::memory_order_acquire);
    uint32_t n = o;
    return next_.compare_exchange_strong(n, n + 1, std::memory_order_acquire,
                                         std::memory_order_relaxed);
  }
  void unlock(Node&) {
    owner_.store(owner_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
  bool is_locked() const {
    return owner_.load(std::memory_order_relaxed) != next_.load(std::memory_order_relaxed);
  }

 private:
  std::atomic<uint32_t> next_{0};   // next ticket to hand out
  std::atomic<uint32_t> owner_{0};  // ticket being served
};

}  // namespace kvmscale::locks
