// Populate-on-demand for one VM's free RAM (memslot 1): mm::Pod's policy on real memory.
// Faults come from the FaultService; zero checks read the host mapping; fencing is userfaultfd
// write-protection (no guest write can land between the zero check and MADV_DONTNEED) plus the
// VM's p2m (mm::P2mView: the entry's epoch); the flush is the p2m's (sched::P2m: a cross-call to
// the contexts holding the VM). VMM-side accesses populate and hold pages here (get_page), which
// the p2m forwards to it. Addresses given to the p2m are guest-physical: PoD covers gpa_base up.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "locks/any_lock.hpp"
#include "mm/fault_service.hpp"
#include "mm/p2m_view.hpp"
#include "mm/pod.hpp"
#include "mm/userfaultfd.hpp"

namespace kvmscale::mm {

// True if [p, p+len) is all zero bytes (len a multiple of 8): the PoD zero check.
bool is_zero(const uint8_t* p, uint64_t len);

class PodVm final : public PodBackend {
 public:
  enum class Outcome { Resolved, OutOfMemory };
  // Registers [ram, ram+len) with uffd. `lock` serialises the policy (class "pod"). The range is
  // guest-physical [gpa_base, gpa_base+len); `p2m` is the VM's (it outlives this), and this PodVm
  // must be attached to it (sched::P2m::attach_pod) before the first fault: the p2m keeps the
  // epochs its fences bump. `out_of_memory` runs when a VMM-side access finds the VM out of PoD
  // memory (it crashes the VM).
  PodVm(uint8_t* ram, uint64_t len, uint64_t granule, PodParams params, Userfaultfd& uffd,
        std::unique_ptr<locks::AnyLock> lock, P2mView& p2m, uint64_t gpa_base = 0,
        std::function<void()> out_of_memory = {});
  ~PodVm() override;

  bool contains(uint64_t addr) const { return addr >= base_ && addr - base_ < len_; }
  // Guest-physical extent and granule size: what the p2m keeps epochs for.
  uint64_t gpa_base() const { return gpa_base_; }
  uint64_t size() const { return len_; }
  uint64_t granule() const { return granule_; }

  Outcome handle(const FaultEvent& ev);
  nlohmann::json report() const;

  // A VMM-side access to `gpa` on the calling thread, as Xen's get_page_from_gfn(P2M_ALLOC) in
  // __hvm_copy: populates its granule here if it is PoD (p2m_pod_demand_populate) and takes a
  // reference, so that no zero check reclaims it until put_page() (p2m_pod_zero_check skips a
  // page with references beyond the domain's own). Without it a handler's buffer could be
  // reclaimed between its populate and its read, and the read would then fault on the calling
  // thread, possibly holding a lock another context waits for without answering flushes.
  // `poll` runs while waiting for the lock (and, through the flush, for acks), so a lock holder
  // flushing towards this thread's context gets its ack. False: out of PoD memory.
  // (The p2m's get_page/put_page, mm/p2m_view.hpp, come here.)
  bool get_page(uint64_t gpa, const std::function<void()>& poll);
  void put_page(uint64_t gpa);
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
  static constexpr uint64_t kQuickPage = 4096;  // the quick check reads each 4 KiB page's start
  uint64_t addr(uint64_t g) const { return base_ + g * granule_; }
  uint64_t base_, len_, granule_, gpa_base_;
  Userfaultfd& uffd_;
  std::unique_ptr<locks::AnyLock> lock_;
  P2mView& p2m_;
  std::function<void()> out_of_memory_;
  Pod pod_;
  uint64_t wp_faults_ = 0, uffd_errors_ = 0, vmm_populates_ = 0, oom_unblocked_ = 0;
  // VMM-side references per granule: taken under the pod lock (so never during a zero check),
  // dropped anywhere.
  std::unique_ptr<std::atomic<uint32_t>[]> refs_;
};

}  // namespace kvmscale::mm
