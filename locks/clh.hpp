// CLH queue lock: each waiter spins on its predecessor's node. FIFO. On release a thread gives its
// node to its successor and takes over its predecessor's, so nodes come from a per-thread pool
// (recycled, never freed); the Guard's Node only holds pointers, so callers cannot get it wrong.
#pragma once

#include <atomic>
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

  ClhLock() : tail_(new QNode) {}
  ~ClhLock() { give_node(tail_.load()); }
  ClhLock(const ClhLock&) = delete;
  ClhLock& operator=(const ClhLock&) = delete;

  void lock(Node& n) { lock(n, NoPoll{}); }
  template <typename Poll>
  void lock(Node& n, Poll&& poll) {
    n.mine = take_node();
    n.mine->locked.store(true, std::memory_order_relaxed);
    n.pred = tail_.exchange(n.mine, std::memory_order_acq_rel);
    while (n.pred->locked.load(std::memory_order_acquire)) {
      poll();
      cpu_relax();
    }
  }
  bool try_lock(Node& n) {
    QNode* t = tail_.load(std::memory_order_acquire);
    if (t->locked.load(std::memory_order_acquire)) return false;
    n.mine = take_node();
    n.mine->locked.store(true, std::memory_order_relaxed);
    if (tail_.compare_exchange_strong(t, n.mine, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
      n.pred = t;
      // Normally t is still unlocked. In one ABA interleaving (t released, recycled by the thread
      // that took it as predecessor and enqueued again before our CAS) we are now queued behind
      // that thread: a queued CLH waiter cannot leave, so wait out its critical section.
      while (t->locked.load(std::memory_order_acquire)) cpu_relax();
      return true;
    }
    give_node(n.mine);
    n.mine = nullptr;
    return false;
  }
  void unlock(Node& n) {
    n.mine->locked.store(false, std::memory_order_release);  // successor now owns n.mine
    give_node(n.pred);                                       // and we own our predecessor's
  }
  bool is_locked() const { return tail_.load()->locked.load(std::memory_order_relaxed); }

 private:
  // Queue nodes are recycled, never freed: another thread's try_lock() may still read the
  // `locked` flag of a node it saw as the tail a moment ago (TSan caught a use-after-free when
  // pools were freed at thread exit). A thread's pool goes to a shared list when it exits.
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

  std::atomic<QNode*> tail_;
};

}  // namespace kvmscale::locks
