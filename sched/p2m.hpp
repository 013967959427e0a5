// One VM's p2m view: the single object behind every EPT-like flush of the VM, holding what Xen
// 4.7 keeps in struct p2m_domain, its ept_data and the domain.
//   epochs          per PoD granule, bumped by fence() and by the flush that follows it: the
//                   software TLB's measure of a missed flush (mm/p2m_view.hpp).
//   dirty mask      d->domain_dirty_cpumask: the contexts that hold the VM's translations. A
//                   context joins when it runs one of the VM's vCPUs and leaves when it switches
//                   to another VM's vCPU (__context_switch, xen/arch/x86/domain.c); a switch to
//                   idle keeps it (lazily).
//   invalidate marks  ept_data.invalidate: contexts that must drop the VM's translations before
//                   their next entry (vmx_vmenter_helper, before_entry() here).
//   flush()         ept_sync_domain (xen/arch/x86/mm/p2m-ept.c): mark EVERY context, then the
//                   synchronous cross-call (on_selected_cpus, wait=1, xen/common/smp.c) to the
//                   dirty mask, whose function drops the VM's entries from each target's TLB.
//                   The initiator is the calling context, or the context a fault thread serves
//                   (CrossCall::ServingFault).
// A flush therefore goes mm::Pod (zero check) -> mm::PodVm -> P2m::flush -> CrossCall -> kicks,
// with no adaptor in between. The executor owns one P2m per VM (its contexts join and leave
// them); the PoD runtime attaches the VM's PodVm and the cross-call for the run.
//
// The mark-then-read-mask of a flush and the join-then-check-mark of an entry are a store-load
// pair on each side (Dekker): both use sequentially consistent operations, so either the flush
// sees the context in the mask (and waits for it) or the entry sees the mark (and invalidates).
// Acquire/release would allow both loads to miss both stores.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "mm/p2m_view.hpp"
#include "mm/soft_tlb.hpp"
#include "sched/atomic_cpuset.hpp"
#include "sched/context_threads.hpp"
#include "sched/cpuset.hpp"
#include "sched/cross_call.hpp"

namespace kvmscale::mm {
class PodVm;
}

namespace kvmscale::sched {

class P2m final : public mm::P2mView {
 public:
  // `tlbs`: each context's software TLB, by context index (the executor's; they outlive this).
  // `threads` says which context the calling thread runs (null: none does, e.g. no contexts).
  P2m(uint32_t vm, std::span<mm::SoftTlb> tlbs, const ContextThreads* threads);
  ~P2m() override;
  P2m(const P2m&) = delete;
  P2m& operator=(const P2m&) = delete;

  uint32_t vm() const { return vm_; }
  uint32_t contexts() const { return uint32_t(tlbs_.size()); }

  // Context c runs one of the VM's vCPUs / switched to another VM's (__context_switch).
  void join(uint32_t c) { dirty_.set(c, kSc); }
  void leave(uint32_t c) { dirty_.clear(c, kSc); }
  // Before each entry of one of the VM's vCPUs on c, after join(): if a flush marked c, drop the
  // VM's translations from c's TLB (vmx_vmenter_helper). True if it did.
  bool before_entry(uint32_t c);
  // Before KVM_RUN of a vCPU of `next` on context c, which holds `held`'s translations (null:
  // none yet): switch dirty masks if the VM changes (__context_switch: leave the old, join the
  // new; idle in between keeps them, lazily), then before_entry(). `held` becomes &next.
  static void enter(uint32_t c, P2m*& held, P2m& next);

  // PoD for the run: `pod` handles the VM's VMM-side populates, `cc` carries its flushes (null
  // only without contexts). Both outlive the attachment; attach before the contexts start,
  // detach after they stopped.
  void attach_pod(mm::PodVm& pod, CrossCall* cc);
  void detach_pod();
  // What exit handlers get with each exit (vmm::PcpuAccess): this p2m while PoD is attached,
  // else null (nothing to populate, every epoch 0: GuestView then skips both).
  mm::P2mView* exit_view() { return pod_ ? this : nullptr; }
  // Test hook: flush() only completes the epochs, as if every flush had been lost.
  void skip_flushes_for_test(bool skip) { skip_flushes_ = skip; }

  // mm::P2mView
  uint32_t epoch(uint64_t gpa) const override;
  void fence(uint64_t gpa) override;
  void flush() override;
  bool get_page(uint64_t gpa, const std::function<void()>& poll) override;
  void put_page(uint64_t gpa) override;

  // The first half of flush(): marks every context and returns the dirty mask (its targets),
  // counting the flush.
  CpuSet prepare_flush();
  // Flushes prepared, and the dirty mask's size at each: total and max (an empty mask is a
  // flush too: it only marks).
  uint64_t flushes() const { return flushes_.load(std::memory_order_relaxed); }
  uint64_t mask_total() const { return mask_total_.load(std::memory_order_relaxed); }
  uint64_t mask_max() const { return mask_max_.load(std::memory_order_relaxed); }
  CpuSet dirty() const { return dirty_.snapshot(kSc); }
  bool marked(uint32_t c) const { return invalidate_.test(c, kSc); }

 private:
  static constexpr std::memory_order kSc = std::memory_order_seq_cst;  // the Dekker pair above
  // The epoch of the granule holding gpa, or null outside PoD RAM.
  std::atomic<uint32_t>* epoch_slot(uint64_t gpa) const;

  const uint32_t vm_;
  std::span<mm::SoftTlb> tlbs_;
  const ContextThreads* threads_;
  AtomicCpuSet dirty_, invalidate_;
  std::atomic<uint64_t> flushes_{0}, mask_total_{0}, mask_max_{0};
  // PoD, while attached.
  mm::PodVm* pod_ = nullptr;
  CrossCall* cc_ = nullptr;
  bool skip_flushes_ = false;
  uint64_t pod_base_ = 0, pod_len_ = 0, granule_ = 1;
  std::unique_ptr<std::atomic<uint32_t>[]> epochs_;
  std::vector<uint64_t> fenced_;  // granules fenced since the last flush (under the pod lock)
};

}  // namespace kvmscale::sched
