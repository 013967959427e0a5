// A VM's p2m as memory code sees it. The PoD policy changes entries through it (fence, flush);
// exit handlers read guest memory through it (epochs for the software TLB's stale check, page
// references that keep a page present while a handler reads it). sched::P2m is the one
// implementation: a single object per VM owns the epochs, the dirty mask, the invalidate marks
// and the flush, as Xen 4.7 keeps them in struct p2m_domain, its ept_data and the domain's dirty
// cpumask. An interface only because mm/ lies below sched/ (and tests substitute fakes).
#pragma once

#include <cstdint>
#include <functional>

namespace kvmscale::mm {

class P2mView {
 public:
  virtual ~P2mView() = default;
  // The epoch of the page at gpa (0 outside PoD RAM): bumped to odd when a zero check fences it
  // (its entry is PoD again: no new translation may be cached), and to even once the flush that
  // invalidated older translations has completed. A translation cached at epoch e may still be
  // used at e + 1 (Xen allows a use between the p2m change and its flush) and is stale from
  // e + 2 on (mm/guest_view.hpp). Lock-free.
  virtual uint32_t epoch(uint64_t gpa) const = 0;
  // The entry of the PoD granule holding gpa became PoD again (p2m_pod_zero_check's
  // p2m_set_entry(..., p2m_populate_on_demand)): its epoch is odd until the next flush().
  virtual void fence(uint64_t gpa) = 0;
  // p2m_tlb_flush_sync -> ept_sync_domain: every context drops the VM's translations before it
  // uses one again, and this returns once the contexts holding them acked; the granules fenced
  // since the last flush then get their even epoch. fence() and flush() are serialised by the
  // caller (the VM's pod lock).
  virtual void flush() = 0;
  // Makes the page at gpa present for a VMM-side access, on the calling thread, and keeps it
  // so until put_page(gpa): Xen's get_page_from_gfn(P2M_ALLOC) runs p2m_pod_demand_populate for
  // a PoD entry a hypercall touches and holds a page reference, which p2m_pod_zero_check
  // respects. `poll` answers the caller's cross-calls while it waits for locks or acks. False:
  // out of PoD memory (the VM has been crashed; no reference taken).
  virtual bool get_page(uint64_t gpa, const std::function<void()>& poll) = 0;
  virtual void put_page(uint64_t gpa) = 0;
};

}  // namespace kvmscale::mm
