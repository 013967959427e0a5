// Which thread runs which cross-call context, so the fault service can tell from a fault's
// thread id which context is stalled. Shared by both executors.
//
// find() runs on every fault and there is a context per vCPU thread under `--sched host`
// (10,000 and more): a lock-free open-addressing table keyed by thread id makes it O(1) instead
// of a scan over the contexts. Entries are never removed: each context registers once, its
// thread before it can fault, and the table has at least twice as many slots as contexts, so a
// probe always ends at an empty slot.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

namespace kvmscale::sched {

class ContextThreads {
 public:
  explicit ContextThreads(size_t contexts)
      : tids_(contexts),
        mask_(std::bit_ceil(std::max<size_t>(2 * contexts, 16)) - 1),
        slots_(std::make_unique<std::atomic<uint64_t>[]>(mask_ + 1)) {}
  // Called by the thread that runs context c, before it can fault.
  void register_current(uint32_t c) { register_thread(c, uint32_t(syscall(SYS_gettid))); }
  // The same for thread `tid` (tests).
  void register_thread(uint32_t c, uint32_t tid) {
    if (c >= tids_.size() || tid == 0) throw std::out_of_range("ContextThreads: bad context");
    tids_[c].store(tid, std::memory_order_relaxed);
    const uint64_t entry = uint64_t(tid) << 32 | c;
    for (size_t i = hash(tid);; i = (i + 1) & mask_) {
      uint64_t seen = 0;
      if (slots_[i].load(std::memory_order_acquire) == 0) {
        // Keep one slot empty whatever happens, so that every probe ends.
        if (used_.fetch_add(1, std::memory_order_relaxed) >= mask_) {
          used_.fetch_sub(1, std::memory_order_relaxed);
          throw std::length_error("ContextThreads: more registrations than slots");
        }
        if (slots_[i].compare_exchange_strong(seen, entry, std::memory_order_release,
                                              std::memory_order_acquire))
          return;
        used_.fetch_sub(1, std::memory_order_relaxed);  // another thread took it first
      } else {
        seen = slots_[i].load(std::memory_order_acquire);
      }
      if (uint32_t(seen >> 32) == tid) {  // a reused thread id: it runs context c now
        slots_[i].store(entry, std::memory_order_release);
        return;
      }
    }
  }
  // The context of thread `tid`, or -1. `probes` (tests) counts the slots looked at.
  int find(uint32_t tid, uint32_t* probes = nullptr) const {
    if (tid == 0) return -1;
    for (size_t i = hash(tid);; i = (i + 1) & mask_) {
      if (probes) ++*probes;
      const uint64_t e = slots_[i].load(std::memory_order_acquire);
      if (e == 0) return -1;
      if (uint32_t(e >> 32) != tid) continue;
      const uint32_t c = uint32_t(e);
      // A context whose thread registered again under another id no longer runs on `tid`.
      return tids_[c].load(std::memory_order_relaxed) == tid ? int(c) : -1;
    }
  }

 private:
  size_t hash(uint32_t tid) const {  // Fibonacci hashing: the product's high bits mix best
    return size_t((uint64_t(tid) * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
  }
  std::vector<std::atomic<uint32_t>> tids_;         // per context: its current thread id
  size_t mask_;                                     // slots - 1 (a power of two minus one)
  std::unique_ptr<std::atomic<uint64_t>[]> slots_;  // tid << 32 | context; 0: empty
  std::atomic<size_t> used_{0};                     // slots taken
};

}  // namespace kvmscale::sched
