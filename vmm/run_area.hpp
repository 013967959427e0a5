// The kvm_run pages of a run's vCPUs, side by side in one address range, so that the run's end
// unmaps them a chunk at a time on a few threads instead of one munmap per vCPU (each munmap
// calls the mmu notifier of every VM still alive in the process: docs/scale.md).
//
// Unmapping a vCPU's kvm_run page after its fds are closed is what destroys its VM: the
// kernel's kvm_destroy_vm, whose mmu_notifier_unregister waits for an SRCU grace period.
// Concurrent waits share grace periods, hence the threads.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vmm/kvm.hpp"

namespace kvmscale::vmm {

class RunArea {
 public:
  // Finds a free address range for `pages` kvm_run pages of `run_size` bytes. Make it when the
  // pages are about to be mapped: the range is free, not reserved, until then.
  RunArea(size_t pages, int run_size);
  RunArea(const RunArea&) = delete;
  RunArea& operator=(const RunArea&) = delete;
  ~RunArea() { release(kReleaseThreads); }

  // Threads that unmap at the end: they mostly sleep in the kernel's grace-period waits, so
  // many more than CPUs (3,000 VMs that ran: 18.5 s on 1 thread, 2.5 s on 64, 0.7 s on 256, on a
  // 2-CPU host).
  static constexpr unsigned kReleaseThreads = 256;

  // Maps vCPU `vcpu`'s kvm_run page at slot `slot`, or anywhere if something else took that
  // address meanwhile (a "stray", unmapped on its own). Throws KvmError.
  kvm_run* map(const VcpuFd& vcpu, size_t slot);
  // Unmaps every page on up to `threads` threads and returns when all are gone. Idempotent;
  // never throws.
  // The vCPUs using these pages must be gone first.
  void release(unsigned threads);
  size_t strays() const { return strays_.size(); }

 private:
  uint8_t* base_ = nullptr;
  size_t pages_ = 0, run_size_ = 0;
  std::vector<bool> in_place_;  // slot i is mapped at base_ + i * run_size_
  std::vector<void*> strays_;
};

}  // namespace kvmscale::vmm
