// A sticky wake-up token for a blocked vCPU: a wake that arrives before the block is not lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace kvmscale::sched {

// BLOCK timeouts (docs/hypercalls.md): 0 means none, and so does anything from 2^62 ns (146
// years) up, so that a deadline (now + timeout) can never overflow: "no timeout" and "far
// future" behave the same on every executor.
inline constexpr uint64_t kMaxBlockTimeoutNs = 1ull << 62;
inline bool block_has_timeout(uint64_t timeout_ns) {
  return timeout_ns != 0 && timeout_ns < kMaxBlockTimeoutNs;
}

class WakeSlot {
 public:
  // Blocks until woken, interrupted, or timeout_ns passes (see block_has_timeout). True if woken.
  bool wait(uint64_t timeout_ns) {
    std::unique_lock lock(mu_);
    auto ready = [&] { return pending_ || interrupted_; };
    bool ok = !block_has_timeout(timeout_ns)
                  ? (cv_.wait(lock, ready), true)
                  : cv_.wait_for(lock, std::chrono::nanoseconds(int64_t(timeout_ns)), ready);
    bool woken = ok && pending_;
    pending_ = false;
    return woken;
  }
  void wake() {
    {
      std::lock_guard lock(mu_);
      pending_ = true;
    }
    cv_.notify_one();
  }
  // Makes every current and future wait() return at once.
  void interrupt() {
    {
      std::lock_guard lock(mu_);
      interrupted_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false;
  bool interrupted_ = false;
};

}  // namespace kvmscale::sched
