// Populate-on-demand for one VM's free RAM (memslot 1): mm::Pod's policy on real memory.
// Faults come from the FaultService; zero checks read the host mapping; fencing is userfaultfd
// write-protection (no guest write can land between the zero check and MADV_DONTNEED); the flush
// is whatever the caller supplies (a cross-call to the VM's pCPUs).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "locks/any_lock.hpp"
#include "mm/fault_service.hpp"
#include "mm/pod.hpp"
#include "mm/userfaultfd.hpp"

namespace kvmscale::mm {

// True if [p, p+len) is all zero bytes (len a multiple of 8): the PoD zero check.
bool is_zero(const uint8_t* p, uint64_t len);

class PodVm final : public PodBackend {
 public:
  enum class Outcome { Resolved, OutOfMemory };
  // Registers [ram, ram+len) with uffd. `lock` serialises the policy (class "pod").
  PodVm(uint8_t* ram, uint64_t len, uint64_t granule, PodParams params, Userfaultfd& uffd,
        std::unique_ptr<locks::AnyLock> lock, std::function<void()> flush);
  ~PodVm() override;

  bool contains(uint64_t addr) const { return addr >= base_ && addr - base_ < len_; }
  // The p2m epoch of the granule holding byte `offset` of the range, bumped twice per zero
  // check that fences it: to odd when it is fenced (the entry is PoD again: no new translation
  // may be cached), to even once the flush that invalidates older translations has completed.
  // A translation cached at epoch e may still be used while the epoch is e + 1 (Xen allows a
  // use between the p2m change and the flush) and is stale from e + 2 on (mm/guest_view.hpp).
  uint32_t epoch_at(uint64_t offset) const {
    uint64_t g = offset / granule_;
    return g < granules_ ? epochs_[g].load(std::memory_order_acquire) : 0;
  }
  Outcome handle(const FaultEvent& ev);
  // A VMM-side access to byte `offset` on the calling thread (mm/guest_view.hpp): populates its
  // granule here if it is PoD. `poll` runs while waiting for the lock (and, through the flush,
  // for acks), so a lock holder flushing towards this thread's context gets its ack.
  Outcome populate_here(uint64_t offset, const std::function<void()>& poll);
  nlohmann::json report() const;
  // Tests only (mm::Pod::set_test_hook); runs under this VM's pod lock.
  void set_test_hook(std::function<void(Pod::HookPoint, uint64_t)> h) {
    pod_.set_test_hook(std::move(h));
  }
  uint8_t* granule_addr(uint64_t g) const { return reinterpret_cast<uint8_t*>(addr(g)); }

  // PodBackend
  bool quick_zero(uint64_t g) override;
  bool full_zero(uint64_t g) override;
  void fence(uint64_t g) override;
  void unfence(uint64_t g) override;
  void discard(uint64_t g) override;
  void flush() override;

 private:
  uint64_t addr(uint64_t g) const { return base_ + g * granule_; }
  uint64_t base_, len_, granule_;
  Userfaultfd& uffd_;
  std::unique_ptr<locks::AnyLock> lock_;
  std::function<void()> flush_;
  Pod pod_;
  uint64_t wp_faults_ = 0, uffd_errors_ = 0, vmm_populates_ = 0, oom_unblocked_ = 0;
  uint64_t granules_;
  std::unique_ptr<std::atomic<uint32_t>[]> epochs_;
  std::vector<uint64_t> fenced_;  // since the last flush: their epochs are odd
};

}  // namespace kvmscale::mm
