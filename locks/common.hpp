// Shared pieces of the lock strategies: the spin hint, the RAII guards, the clock.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "locks/clock.hpp"

namespace kvmscale::locks {

// The strategies --lock chooses from (names in locks/registry.cpp).
enum class Strategy { Ticket, Mcs, Clh, Ttas, Pthread, SpinYield };

inline void cpu_relax() { __builtin_ia32_pause(); }

// lock(node, poll) calls poll() while it waits, so a waiter can do urgent work meanwhile (as a
// CPU spinning on a Xen spinlock with interrupts enabled still answers IPIs). NoPoll compiles away.
struct NoPoll {
  void operator()() const {}
};
template <typename Poll>
inline constexpr bool kPolls = !std::is_same_v<std::decay_t<Poll>, NoPoll>;

// Raises `most` to v if v is larger: a statistic's maximum kept by several threads at once.
template <typename T>
inline void raise_to_max(std::atomic<T>& most, T v) {
  T prev = most.load(std::memory_order_relaxed);
  while (v > prev && !most.compare_exchange_weak(prev, v, std::memory_order_relaxed)) {
  }
}

// The run's clock (locks/clock.hpp): virtual time in a simulation.
inline uint64_t lock_clock_ns() { return clock_ns(); }

// Holds `Lock` for its lifetime. It owns the queue node that MCS/CLH need, so a caller cannot
// reuse, move or forget one. Every strategy exposes lock(Node&), try_lock(Node&), unlock(Node&).
template <typename Lock>
class Guard {
 public:
  explicit Guard(Lock& l) : lock_(l) { lock_.lock(node_); }
  ~Guard() { lock_.unlock(node_); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  Lock& lock_;
  typename Lock::Node node_;
};

// Like Guard, but only tries: owns() says whether the lock was taken.
template <typename Lock>
class TryGuard {
 public:
  explicit TryGuard(Lock& l) : lock_(l), owns_(lock_.try_lock(node_)) {}
  ~TryGuard() {
    if (owns_) lock_.unlock(node_);
  }
  TryGuard(const TryGuard&) = delete;
  TryGuard& operator=(const TryGuard&) = delete;
  bool owns() const { return owns_; }
  explicit operator bool() const { return owns_; }

 private:
  Lock& lock_;
  typename Lock::Node node_;
  bool owns_;
};

// For strategies that need no per-acquisition state.
struct NoNode {
  NoNode() = default;
  NoNode(const NoNode&) = delete;
  NoNode& operator=(const NoNode&) = delete;
};

}  // namespace kvmscale::locks
