// MCS queue lock: each waiter spins on its own node, so a release touches one waiter's cache
// line only. FIFO. The node lives in the Guard for the whole critical section.
#pragma once

#include <atomic>

#include "locks/common.hpp"

namespace kvmscale::locks {

class McsLock {
 public:
  struct alignas(64) Node {
    Node() = default;
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    std::atomic<Node*> next{nullptr};
    std::atomic<bool> waiting{false};
  };

  void lock(Node& me) { lock(me, NoPoll{}); }
  template <typename Poll>
  void lock(Node& me, Poll&& poll) {
    me.next.store(nullptr, std::memory_order_relaxed);
    me.waiting.store(true, std::memory_order_relaxed);
    Node* prev = tail_.exchange(&me, std::memory_order_acq_rel);
    if (prev == nullptr) return;
    prev->next.store(&me, std::memory_order_release);
    while (me.waiting.load(std::memory_order_acquire)) {
      poll();
      cpu_relax();
    }
  }
  bool try_lock(Node& me) {
    me.next.store(nullptr, std::memory_order_relaxed);
    Node* expected = nullptr;
    return tail_.compare_exchange_strong(expected, &me, std::memory_order_acq_rel,
                                         std::memory_order_relaxed);
  }
  void unlock(Node& me) {
    Node* succ = me.next.load(std::memory_order_acquire);
    if (succ == nullptr) {
      Node* expected = &me;
      if (tail_.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel,
                                        std::memory_order_relaxed))
        return;
      // A successor swapped itself in but has not linked yet: wait for the link.
      while ((succ = me.next.load(std::memory_order_acquire)) == nullptr) cpu_relax();
    }
    succ->waiting.store(false, std::memory_order_release);
  }
  bool is_locked() const { return tail_.load(std::memory_order_relaxed) != nullptr; }

 private:
  std::atomic<Node*> tail_{nullptr};
};

}  // namespace kvmscale::locks
