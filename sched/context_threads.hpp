// Which thread runs which cross-call context, so the fault service can tell from a fault's
// thread id which context is stalled. Shared by both executors.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <vector>

namespace kvmscale::sched {

class ContextThreads {
 public:
  explicit ContextThreads(size_t contexts) : tids_(contexts) {}
  // Called by the thread that runs context c, before it can fault.
  void register_current(uint32_t c) {
    tids_[c].store(uint32_t(syscall(SYS_gettid)), std::memory_order_relaxed);
  }
  // The context of thread `tid`, or -1.
  int find(uint32_t tid) const {
    for (size_t c = 0; c < tids_.size(); c++)
      if (tids_[c].load(std::memory_order_relaxed) == tid) return int(c);
    return -1;
  }

 private:
  std::vector<std::atomic<uint32_t>> tids_;
};

}  // namespace kvmscale::sched
