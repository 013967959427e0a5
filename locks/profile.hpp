// Lock profiling in the spirit of Xen's lock profiler. Counters that change while the lock is
// held are plain fields (the lock itself orders them); only failed try-locks, which happen
// without the lock, are atomic. The uncontended path adds no clock reads: waits are timed only
// after a first try fails, and hold times are sampled every kHoldSampleEvery acquisitions.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace kvmscale::locks {

inline constexpr int kWaitBuckets = 40;  // log2(ns) buckets: [2^i, 2^(i+1))
inline constexpr uint64_t kHoldSampleEvery = 16;

struct LockStats {
  uint64_t acquisitions = 0;  // lock() and successful try_lock()
  uint64_t contended = 0;     // lock() calls that had to wait
  uint64_t try_ok = 0, try_fail = 0;
  uint64_t wait_ns = 0, wait_max_ns = 0;
  uint64_t hold_samples = 0, hold_sampled_ns = 0, hold_max_ns = 0;
  std::array<uint64_t, kWaitBuckets> wait_hist{};

  // Estimated total hold time: sampled mean x acquisitions.
  uint64_t hold_ns_estimate() const {
    return hold_samples ? hold_sampled_ns / hold_samples * acquisitions : 0;
  }
  void merge(const LockStats& o);
  static int bucket(uint64_t ns) {
    return ns ? std::min(63 - __builtin_clzll(ns), kWaitBuckets - 1) : 0;
  }
};

// One per lock instance, e.g. class "runq", name "runq[3]".
class LockProfile {
 public:
  LockProfile(std::string cls, std::string name) : cls_(std::move(cls)), name_(std::move(name)) {}
  const std::string& lock_class() const { return cls_; }
  const std::string& name() const { return name_; }

  // Called with the lock held. wait_ns < 0: the first try succeeded (no wait).
  void acquired(int64_t wait_ns, bool via_try) {
    s_.acquisitions++;
    if (via_try) s_.try_ok++;
    if (wait_ns >= 0) {
      s_.contended++;
      s_.wait_ns += uint64_t(wait_ns);
      if (uint64_t(wait_ns) > s_.wait_max_ns) s_.wait_max_ns = uint64_t(wait_ns);
      s_.wait_hist[LockStats::bucket(uint64_t(wait_ns))]++;
    }
  }
  bool sample_hold() const { return s_.acquisitions % kHoldSampleEvery == 0; }
  void held(uint64_t ns) {
    s_.hold_samples++;
    s_.hold_sampled_ns += ns;
    if (ns > s_.hold_max_ns) s_.hold_max_ns = ns;
  }
  void try_failed() { try_fail_.fetch_add(1, std::memory_order_relaxed); }
  // Read when no thread uses the lock any more (after the run).
  LockStats snapshot() const {
    LockStats s = s_;
    s.try_fail = try_fail_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  std::string cls_, name_;
  LockStats s_;
  std::atomic<uint64_t> try_fail_{0};
};

}  // namespace kvmscale::locks
