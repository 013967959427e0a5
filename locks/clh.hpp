// CLH queue lock: each waiter spins on its predecessor's node. FIFO. On release a thread gives its
// node to its successor and takes over its predecessor's, so nodes come from a per-thread pool
// (recycled, never freed); the Guard's Node only holds pointers, so callers cannot get it wrong.
//
// Free-tail mark: a releaser with no successor marks the tail pointer itself (low bit; nodes are
// 64-byte aligned) instead of only clearing its node's flag. The lock is free exactly when the
// tail is marked, so try_lock is one CAS from a marked tail and can never end up queued: the
// unmarked-tail scheme had an ABA (tail seen free, released, recycled by the thread that took it
// as predecessor and enqueued again before the CAS) in which try_lock queued behind a holder and
// had to wait out its critical section; the credit balancer assumes try-locks never wait.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "locks/common.hpp"

namespace kvmscale::locks {

class ClhLock {
 public:
  struct alignas(64) QNode {
    std::atomic<bool> locked{false};
  };
  struct Node {
    Node() = default;
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    QNode* mine = nullptr;
    QNode* pred = nullptr;
  };

  ClhLock() : tail_(mark(new QNode)) {}
  ~ClhLock() { give_node(unmark(tail_.load())); }
  ClhLock(const ClhLock&) = delete;
  ClhLock& operator=(const ClhLock&) = delete;

  void lock(Node& n) { lock(n, NoPoll{}); }
  template <typename Poll>
  void lock(Node& n, Poll&& poll) {
    n.mine = take_node();
    n.mine->locked.store(true, std::memory_order_relaxed);
    QNode* prev = tail_.exchange(n.mine, std::memory_order_acq_rel);
    n.pred = unmark(prev);
    if (prev == n.pred)  // unmarked: a holder or waiter ahead of us; its flag is the baton
      while (n.pred->locked.load(std::memory_order_acquire)) {
        poll();
        cpu_relax();
      }
  }
  bool try_lock(Node& n) {
    QNode* t = tail_.load(std::memory_order_acquire);
    if (t != mark(unmark(t))) return false;  // held or queued
    n.mine = take_node();
    n.mine->locked.store(true, std::memory_order_relaxed);
    if (try_lock_hook) try_lock_hook();
    // A marked tail means free whatever happened since the load: the CAS succeeds only if the
    // lock is free now, so it never queues us behind anyone.
    if (tail_.compare_exchange_strong(t, n.mine, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
      n.pred = unmark(t);
      return true;
    }
    give_node(n.mine);
    n.mine = nullptr;
    return false;
  }
  void unlock(Node& n) {
    QNode* mine = n.mine;
    // No successor: mark the tail free (our node stays as the tail; the next locker inherits it).
    // Otherwise the successor spins on our node: clear its flag (it now owns the node).
    if (!tail_.compare_exchange_strong(mine, mark(n.mine), std::memory_order_release,
                                       std::memory_order_relaxed))
      n.mine->locked.store(false, std::memory_order_release);
    give_node(n.pred);  // we own our predecessor's node
  }
  bool is_locked() const {
    QNode* t = tail_.load(std::memory_order_relaxed);
    return t != mark(unmark(t));
  }
  // Tests only: runs inside try_lock between reading the tail and the CAS, on this thread.
  static inline thread_local void (*try_lock_hook)() = nullptr;

 private:
  // Queue nodes are recycled, never freed (a thread's pool goes to a shared list when it exits):
  // cheap, and no reader of a node it saw a moment ago can touch freed memory.
  struct Shared {
    std::mutex mu;
    std::vector<QNode*> free;
  };
  static Shared& shared() {
    static Shared* s = new Shared;  // never destroyed: threads may exit during static teardown
    return *s;
  }
  struct Pool {
    std::vector<QNode*> free;
    ~Pool() {
      std::lock_guard g(shared().mu);
      shared().free.insert(shared().free.end(), free.begin(), free.end());
    }
  };
  static Pool& pool() {
    thread_local Pool p;
    return p;
  }
  static QNode* take_node() {
    Pool& p = pool();
    if (p.free.empty()) {
      std::lock_guard g(shared().mu);
      if (shared().free.empty()) return new QNode;
      QNode* q = shared().free.back();
      shared().free.pop_back();
      return q;
    }
    QNode* q = p.free.back();
    p.free.pop_back();
    return q;
  }
  static void give_node(QNode* q) { pool().free.push_back(q); }
  static QNode* mark(QNode* q) { return reinterpret_cast<QNode*>(uintptr_t(q) | 1); }
  static QNode* unmark(QNode* q) { return reinterpret_cast<QNode*>(uintptr_t(q) & ~uintptr_t(1)); }

  std::atomic<QNode*> tail_;
};

}  // namespace kvmscale::locks
