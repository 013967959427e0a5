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
#include "sched/cpuset.hpp"
#include "sched/cross_call.hpp"

namespace kvmscale::sched {

class P2mSync {
 public:
  explicit P2mSync(uint32_t contexts)
      : n_(contexts),
        dirty_(std::make_unique<std::atomic<uint64_t>[]>(words())),
        invalidate_(std::make_unique<std::atomic<uint64_t>[]>(words())) {}

  uint32_t vm = 0;  // the VM's index, for the flush probe
  void join(uint32_t c) { dirty_[c / 64].fetch_or(bit(c), std::memory_order_seq_cst); }
  void leave(uint32_t c) { dirty_[c / 64].fetch_and(~bit(c), std::memory_order_seq_cst); }
  bool take_invalidate(uint32_t c) {
    if (!(invalidate_[c / 64].load(std::memory_order_seq_cst) & bit(c))) return false;
    return invalidate_[c / 64].fetch_and(~bit(c), std::memory_order_seq_cst) & bit(c);
  }
  CpuSet prepare_flush() {
    for (uint32_t w = 0; w < words(); w++)
      invalidate_[w].store(w + 1 < words() || n_ % 64 == 0 ? ~0ull : (1ull << (n_ % 64)) - 1,
                           std::memory_order_seq_cst);
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
  CpuSet dirty() const {
    CpuSet s(n_);
    for (uint32_t c = 0; c < n_; c++)
      if (dirty_[c / 64].load(std::memory_order_seq_cst) & bit(c)) s.set(c);
    return s;
  }
  bool marked(uint32_t c) const {
    return invalidate_[c / 64].load(std::memory_order_seq_cst) & bit(c);
  }

 private:
  static uint64_t bit(uint32_t c) { return 1ull << (c % 64); }
  uint32_t words() const { return (n_ + 63) / 64; }
  uint32_t n_;
  std::unique_ptr<std::atomic<uint64_t>[]> dirty_, invalidate_;
  std::atomic<uint64_t> flushes_{0}, mask_total_{0}, mask_max_{0};
};

}  // namespace kvmscale::sched
