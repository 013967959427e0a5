// The seam for locks implemented above this layer: a simulation's locks in virtual time (sim/).
// AnyLock dispatches to an ExternalLock as to any strategy, so its profile, probes and guards are
// the same code in a simulated run; LockRegistry makes them through an ExternalLockFactory, so the
// same --lock policy chooses which strategy each one stands for.
#pragma once

#include <memory>
#include <string>

#include "locks/common.hpp"

namespace kvmscale::locks {

class ExternalLock {
 public:
  virtual ~ExternalLock() = default;
  // Waits until the lock is this caller's; true if it had to wait (the lock was not free).
  // poll(poll_ctx), when poll is not null, is the waiter's urgent work (AnyLock::lock's poll), to
  // be called while it waits. AnyLock profiles from the result instead of trying first, so a
  // profile (or a tracer) does not change what a simulated lock costs.
  virtual bool lock(void (*poll)(void*), void* poll_ctx) = 0;
  // Takes the lock iff it is free at this instant.
  virtual bool try_lock() = 0;
  virtual void unlock() = 0;
};

class ExternalLockFactory {
 public:
  virtual ~ExternalLockFactory() = default;
  // A lock that stands for strategy `s`, of class `cls`, named `name`.
  virtual std::unique_ptr<ExternalLock> make(Strategy s, const std::string& cls,
                                             const std::string& name) = 0;
};

}  // namespace kvmscale::locks
