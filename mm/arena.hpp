// Memory a run carves into equal slots from one mapping made up front, so that no mapping
// changes per VM or per thread while KVM VMs live in the process. Every munmap, mprotect and
// madvise calls the mmu notifier of every KVM VM of the process (kernel mm/mmu_notifier.c), so
// per-VM mapping changes cost O(VMs) each and O(VMs^2) in all (docs/scale.md).
#pragma once

#include <pthread.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace kvmscale::mm {

// One anonymous MAP_NORESERVE mapping of `slots` x `slot_size` bytes (slot_size rounded up to
// pages). Nothing is committed until touched; the whole mapping goes in one munmap.
class Arena {
 public:
  // Throws std::system_error naming `what`.
  Arena(size_t slots, size_t slot_size, const char* what);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  uint8_t* slot(size_t i) const { return base_ + i * slot_size_; }
  size_t slots() const { return slots_; }
  size_t slot_size() const { return slot_size_; }

 private:
  size_t slots_, slot_size_;
  uint8_t* base_ = nullptr;
};

// Makes glibc's malloc stop changing mappings as the heap grows and shrinks: one arena for
// every thread (another thread's arena grows a page at a time by mprotect, e.g. a VM-creation
// worker's: an mprotect per page of Vm objects, each calling every VM's notifier), no trimming,
// and large blocks from the heap rather than their own mmap and munmap. Call before the first
// VM exists. No effect under sanitizers (their allocators map memory in large slabs).
void settle_malloc_mappings();

// Stack size of threads started on an Arena: exit handlers are shallow, and the stack is only
// committed as it is touched. Sanitizers need deeper frames.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr size_t kArenaStackSize = 2u << 20;
#else
inline constexpr size_t kArenaStackSize = 256u << 10;
#endif

// A joinable thread whose stack is a slot of an Arena: starting and ending it maps, protects and
// advises nothing (glibc leaves user stacks alone). There is no guard page (a guard is an
// mprotect per thread); instead a canary word at the stack's far end is checked at join, and a
// thread found to have overrun its stack ends the process with a message. A detector, not a
// guard: an overrun has already written into the neighbouring slot (another thread's stack top,
// its struct pthread and TLS), and a large frame can step over the canary.
class StackThread {
 public:
  StackThread() = default;
  StackThread(StackThread&& o) noexcept;
  StackThread& operator=(StackThread&& o) noexcept;
  StackThread(const StackThread&) = delete;
  ~StackThread();  // joins if still joinable
  bool joinable() const { return started_; }
  void join();

  // Starts `fn` on slot `i` of `stacks`; `what` names the thread in the error (ThreadStartError,
  // mm/thread_start.hpp). The arena must outlive the thread.
  static StackThread start(const Arena& stacks, size_t i, const std::string& what,
                           std::function<void()> fn);

 private:
  pthread_t thread_{};
  bool started_ = false;
  uint64_t* canary_ = nullptr;
  std::unique_ptr<std::function<void()>> fn_;
};

}  // namespace kvmscale::mm
