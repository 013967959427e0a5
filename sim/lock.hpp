// Locks in virtual time: one SimLock per lock of a simulated run, standing for the strategy the
// --lock policy gives its class. A waiter's actor waits in a queue; a release with k waiters
// hands the lock to the next owner after the strategy's hand-off cost (LockCosts::handoff_ns).
// Plugged in under AnyLock (locks/external_lock.hpp), so profiles and probes are the real code.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "locks/external_lock.hpp"
#include "sim/engine.hpp"

namespace kvmscale::sim {

// The hand-off model of Boyd-Wickizer, Kaashoek, Morris and Zeldovich, "Non-scalable locks are
// dangerous", Linux Symposium 2012 (section 3): after a release with k cores waiting,
//   ticket      c*k/2  every spinner re-reads the released line; the directory serves them in
//                      turn, and the next ticket holder is on average halfway along
//   mcs, clh    c      one line moves to the successor
//   ttas        c*k    every spinner tries its exchange; the winner is random
//   pthread     futex_wake_ns: a FUTEX_WAKE and the sleeper's wake-up (FIFO here)
//   spin-yield  yield_ns: waiters are yielding or parked; the winner is random
// c is the time to move one cache line between two cores (later: by distance). Taking a free
// lock and a try_lock (successful or not) cost c: one atomic operation on the lock's line.
struct LockCosts {
  Time line_ns = 100;          // c
  Time futex_wake_ns = 2'000;  // pthread hand-off to a sleeping waiter
  Time yield_ns = 1'000;       // spin-yield hand-off

  Time handoff_ns(locks::Strategy s, uint64_t waiters) const;
  // Whether the next owner is a random waiter rather than the longest waiting.
  static bool random_winner(locks::Strategy s);
};

class SimLock : public locks::ExternalLock {
 public:
  SimLock(Engine& e, locks::Strategy s, const LockCosts& costs)
      : engine_(e), strategy_(s), costs_(costs), waiters_(e) {}

  // Called by an actor: suspends it while the lock is someone else's.
  bool lock(void (*poll)(void*), void* poll_ctx) override;
  bool try_lock() override;
  void unlock() override;

  bool held() const { return owner_ != nullptr; }
  const Actor* owner() const { return owner_; }
  size_t waiting() const { return waiters_.size(); }
  uint64_t handoffs() const { return handoffs_; }

 private:
  Engine& engine_;
  locks::Strategy strategy_;
  LockCosts costs_;
  WaitQueue waiters_;
  Actor* owner_ = nullptr;  // set at the release for the next owner: in transit counts as held
  uint64_t handoffs_ = 0;
};

// What a simulated run hands to locks::LockRegistry: every lock it makes is a SimLock.
class SimLockFactory : public locks::ExternalLockFactory {
 public:
  SimLockFactory(Engine& e, LockCosts costs) : engine_(e), costs_(costs) {}
  std::unique_ptr<locks::ExternalLock> make(locks::Strategy s, const std::string& cls,
                                            const std::string& name) override;
  const LockCosts& costs() const { return costs_; }

 private:
  Engine& engine_;
  LockCosts costs_;
};

}  // namespace kvmscale::sim
