// Populate-on-demand for one VM's free RAM (memslot 1): mm::Pod's policy on real memory.
// Faults come from the FaultService; zero checks read the host mapping; fencing is userfaultfd
// write-protection (no guest write can land between the zero check and MADV_DONTNEED); the flush
// is whatever the caller supplies (a cross-call to the VM's pCPUs). It is also the VM's p2m as
// exit handlers see it (mm::P2mEpochs, in guest-physical addresses: PoD covers gpa_base up):
// epochs for the TLB's stale check, and page references that keep a page a handler reads from
// being reclaimed under it.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "locks/any_lock.hpp"
#include "mm/fault_service.hpp"
#include "mm/guest_view.hpp"
#include "mm/pod.hpp"
#include "mm/userfaultfd.hpp"

namespace kvmscale::mm {

// True if [p, p+len) is all zero bytes (len a multiple of 8): the PoD zero check.
bool is_zero(const uint8_t* p, uint64_t len);

class PodVm final : public PodBackend, public P2mEpochs {
 public:
  enum class Outcome { Resolved, OutOfMemory };
  // Registers [ram, ram+len) with uffd. `lock` serialises the policy (class "pod"). The range is
  // guest-physical [gpa_base, gpa_base+len); `out_of_memory` runs when a VMM-side access finds
  // the VM out of PoD memory (it crashes the VM).
  PodVm(uint8_t* ram, uint64_t len, uint64_t granule, PodParams params, Userfaultfd& uffd,
        std::unique_ptr<locks::AnyLock> lock, std::function<void()> flush, uint64_t gpa_base = 0,
        std::function<void()> out_of_memory = {});
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
  nlohmann::json report() const;

  // P2mEpochs (exit handlers, mm/guest_view.hpp).
  uint32_t epoch(uint64_t gpa) const override {
    return gpa < gpa_base_ ? 0 : epoch_at(gpa - gpa_base_);
  }
  // A VMM-side access to `gpa` on the calling thread, as Xen's get_page_from_gfn(P2M_ALLOC) in
  // __hvm_copy: populates its granule here if it is PoD (p2m_pod_demand_populate) and takes a
  // reference, so that no zero check reclaims it until put_page() (p2m_pod_zero_check skips a
  // page with references beyond the domain's own). Without it a handler's buffer could be
  // reclaimed between its populate and its read, and the read would then fault on the calling
  // thread, possibly holding a lock another context waits for without answering flushes.
  // `poll` runs while waiting for the lock (and, through the flush, for acks), so a lock holder
  // flushing towards this thread's context gets its ack. False: out of PoD memory.
  bool get_page(uint64_t gpa, const std::function<void()>& poll) override;
  void put_page(uint64_t gpa) override;
  // Tests only (mm::Pod::set_test_hook); runs under this VM's pod lock.
  void set_test_hook(std::function<void(Pod::HookPoint, uint64_t)> h) {
    pod_.set_test_hook(std::move(h));
  }
  uint8_t* granule_addr(uint64_t g) const { return reinterpret_cast<uint8_t*>(addr(g)); }

  // PodBackend
  bool referenced(uint64_t g) override { return refs_[g].load(std::memory_order_acquire) != 0; }
  bool quick_zero(uint64_t g) override;
  bool full_zero(uint64_t g) override;
  void fence(uint64_t g) override;
  void unfence(uint64_t g) override;
  void discard(uint64_t g) override;
  void flush() override;

 private:
  uint64_t addr(uint64_t g) const { return base_ + g * granule_; }
  uint64_t base_, len_, granule_, gpa_base_;
  Userfaultfd& uffd_;
  std::unique_ptr<locks::AnyLock> lock_;
  std::function<void()> flush_, out_of_memory_;
  Pod pod_;
  uint64_t wp_faults_ = 0, uffd_errors_ = 0, vmm_populates_ = 0, oom_unblocked_ = 0;
  uint64_t granules_;
  std::unique_ptr<std::atomic<uint32_t>[]> epochs_;
  // VMM-side references per granule: taken under the pod lock (so never during a zero check),
  // dropped anywhere.
  std::unique_ptr<std::atomic<uint32_t>[]> refs_;
  std::vector<uint64_t> fenced_;  // since the last flush: their epochs are odd
};

}  // namespace kvmscale::mm
