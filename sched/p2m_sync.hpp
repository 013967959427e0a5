// One VM's EPT-like flush state, as Xen 4.7 keeps it: the domain's dirty cpumask (contexts that
// hold its translations) and ept_data's `invalidate` mask (contexts that must drop them before
// their next VM entry).
//   join/leave   __context_switch (xen/arch/x86/domain.c): a pCPU joins the mask when it runs one
//                of the VM's vCPUs and leaves it when it switches to another VM's vCPU; a switch
//                to idle keeps it (lazily).
//   take_invalidate  vmx_vmenter_helper: before entry, a marked context invalidates and clears its
//                mark.
//   prepare_flush    ept_sync_domain: mark EVERY context, then return the dirty mask: the targets
//                of the synchronous cross-call (on_selected_cpus, wait=1).
// The mark-then-read-mask of a flush and the join-then-check-mark of an entry are a store-load
// pair on each side (Dekker): both use sequentially consistent operations, so either the flush
// sees the context in the mask (and waits for it) or the entry sees the mark (and invalidates).
// Acquire/release would allow both loads to miss both stores.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "locks/probe.hpp"
#include "sched/atomic_cpuset.hpp"
#include "sched/cpuset.hpp"
#include "sched/cross_call.hpp"

namespace kvmscale::sched {

class P2mSync {
 public:
  explicit P2mSync(uint32_t contexts) : dirty_(contexts), invalidate_(contexts) {}

  uint32_t vm = 0;  // the VM's index, for the flush probe
  void join(uint32_t c) { dirty_.set(c, kSc); }
  void leave(uint32_t c) { dirty_.clear(c, kSc); }
  bool take_invalidate(uint32_t c) { return invalidate_.test_and_clear(c, kSc); }
  CpuSet prepare_flush() {
    invalidate_.fill(kSc);
    CpuSet targets = dirty();
    const uint64_t n = targets.count();
    flushes_.fetch_add(1, std::memory_order_relaxed);
    mask_total_.fetch_add(n, std::memory_order_relaxed);
    KS_PROBE(flush, vm, n);
    uint64_t most = mask_max_.load(std::memory_order_relaxed);
    while (n > most && !mask_max_.compare_exchange_weak(most, n, std::memory_order_relaxed)) {
    }
    return targets;
  }
  // The flush itself (ept_sync_domain): mark every context, then run `fn` on the dirty mask
  // through the synchronous cross-call; `self`/`initiator` as CrossCall::on_selected_cpus.
  void flush(CrossCall& cc, const CrossCall::Fn& fn, int self, int initiator) {
    cc.on_selected_cpus(prepare_flush(), fn, self, initiator);
  }
  // Flushes prepared, and the dirty mask's size at each: total and max (an empty mask is a
  // flush too: it only marks).
  uint64_t flushes() const { return flushes_.load(std::memory_order_relaxed); }
  uint64_t mask_total() const { return mask_total_.load(std::memory_order_relaxed); }
  uint64_t mask_max() const { return mask_max_.load(std::memory_order_relaxed); }
  CpuSet dirty() const { return dirty_.snapshot(kSc); }
  bool marked(uint32_t c) const { return invalidate_.test(c, kSc); }

 private:
  static constexpr std::memory_order kSc = std::memory_order_seq_cst;  // the Dekker pair above
  AtomicCpuSet dirty_, invalidate_;
  std::atomic<uint64_t> flushes_{0}, mask_total_{0}, mask_max_{0};
};

}  // namespace kvmscale::sched
