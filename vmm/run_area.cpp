#include "vmm/run_area.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <optional>

#include "mm/arena.hpp"

namespace kvmscale::vmm {

RunArea::RunArea(size_t pages, int run_size)
    : pages_(pages), run_size_(size_t(run_size)), in_place_(pages, false) {
  if (pages_ == 0) return;
  // Ask the kernel for a free range, then give it back: mapping into a reserved range would
  // replace part of a mapping, itself an unmap that calls every VM's notifier.
  void* p = ::mmap(nullptr, pages_ * run_size_, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw KvmError("mmap kvm_run area", errno);
  ::munmap(p, pages_ * run_size_);
  base_ = static_cast<uint8_t*>(p);
}

kvm_run* RunArea::map(const VcpuFd& vcpu, size_t slot) {
  void* want = base_ + slot * run_size_;
  void* p = ::mmap(want, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE,
                   vcpu.fd(), 0);
  if (p == want) {
    in_place_[slot] = true;
    return static_cast<kvm_run*>(p);
  }
  if (p != MAP_FAILED) {  // kernels before 4.17 take the flag as a hint
    strays_.push_back(p);
    return static_cast<kvm_run*>(p);
  }
  if (errno != EEXIST) throw KvmError("mmap kvm_run", errno);
  // The kernel may place it in a later slot: that slot's page then becomes a stray in turn.
  p = ::mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.fd(), 0);
  if (p == MAP_FAILED) throw KvmError("mmap kvm_run", errno);
  strays_.push_back(p);
  return static_cast<kvm_run*>(p);
}

void RunArea::release(unsigned threads) {
  for (void* p : strays_) ::munmap(p, run_size_);
  strays_.clear();
  // Chunks of in-place slots; a slot not in place may hold someone else's mapping.
  constexpr size_t kChunk = 8;
  std::atomic<size_t> next{0};
  auto unmap_chunks = [&] {
    for (;;) {
      size_t first = next.fetch_add(kChunk);
      if (first >= pages_) return;
      size_t end = std::min(pages_, first + kChunk);
      for (size_t i = first; i < end;) {
        if (!in_place_[i]) {
          i++;
          continue;
        }
        size_t j = i;
        while (j < end && in_place_[j]) j++;
        ::munmap(base_ + i * run_size_, (j - i) * run_size_);
        i = j;
      }
    }
  };
  if (std::find(in_place_.begin(), in_place_.end(), true) == in_place_.end()) return;
  const size_t chunks = (pages_ + kChunk - 1) / kChunk;
  const size_t helpers =
      std::min<size_t>(threads, chunks) > 1 ? std::min<size_t>(threads, chunks) - 1 : 0;
  // Never throws (it runs from the destructor, also while a RunError unwinds): without stacks
  // or threads, the calling thread unmaps everything itself, only slower.
  std::optional<mm::Arena> stacks;
  std::vector<mm::StackThread> pool;
  try {
    if (helpers > 0) {
      stacks.emplace(helpers, mm::kArenaStackSize, "teardown thread stacks");
      pool.reserve(helpers);
      for (size_t t = 0; t < helpers; t++)
        pool.push_back(mm::StackThread::start(*stacks, t, "teardown thread", unmap_chunks));
    }
  } catch (const std::exception&) {
  }
  unmap_chunks();
  for (auto& t : pool) t.join();
  std::fill(in_place_.begin(), in_place_.end(), false);
}

}  // namespace kvmscale::vmm
