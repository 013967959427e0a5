// GuestView: how an exit handler on one pCPU touches a guest's memory on its behalf. Every
// access is bounds-checked by GuestMemory and goes through that pCPU's software TLB; before a
// translation the pCPU passes a safe point (answers pending flushes), so a flush it was excused
// from while stalled is applied before it can use an old translation.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "mm/guest_memory.hpp"
#include "mm/p2m_view.hpp"
#include "mm/soft_tlb.hpp"

namespace kvmscale::mm {

class GuestView {
 public:
  static constexpr uint64_t kPage = 4096;
  // tlb, safe_point and p2m may be null (no TLB: direct translation; no p2m: no PoD, epoch 0).
  GuestView(const GuestMemory& mem, uint32_t vm, SoftTlb* tlb,
            const std::function<void()>* safe_point, P2mView* p2m)
      : mem_(mem), vm_(vm), tlb_(tlb), safe_point_(safe_point), p2m_(p2m) {}
  // Pointers it returned are valid (their pages held) until it goes: one exit's handling.
  ~GuestView() {
    for (uint64_t gpa : held_) p2m_->put_page(gpa);
  }
  GuestView(const GuestView&) = delete;
  GuestView& operator=(const GuestView&) = delete;
  uint32_t vm() const { return vm_; }

  // Host pointer for [gpa, gpa+len), nullptr unless it is all guest memory (or the VM ran out
  // of PoD memory populating it). Its pages stay present while this view lives.
  uint8_t* translate(uint64_t gpa, uint64_t len) const {
    uint8_t* p = mem_.translate(gpa, len);
    if (p && len) {
      safe_point();
      if (!populate(gpa, len)) return nullptr;
      walk(gpa, len);
    }
    return p;
  }
  // A NUL-terminated guest string of at most out.size() - 1 bytes (see GuestMemory).
  std::optional<size_t> read_cstring(uint64_t gpa, std::span<char> out) const {
    if (!mem_.translate(gpa, 1)) return std::nullopt;
    safe_point();
    const uint64_t end = std::min<uint64_t>(mem_.size(), gpa + out.size());
    if (!populate(gpa, end - gpa)) return std::nullopt;
    auto n = mem_.read_cstring(gpa, out);
    walk(gpa, n ? *n + 1 : 1);  // the string and its NUL, which are guest memory
    return n;
  }

 private:
  // Populates the range's PoD pages here, on the accessing thread, and holds them until the view
  // goes, so that the access itself cannot fault: a fault thread flushing on another page would
  // wait for this context's ack while this context waited for a fault thread (docs/pod.md,
  // stall rule), and a context waiting for a lock this one holds (the console's) could not ack
  // either. A held page is never zero-checked, so populating page 2 cannot reclaim page 1 under us.
  bool populate(uint64_t gpa, uint64_t len) const {
    if (!p2m_) return true;
    const std::function<void()> none;
    const std::function<void()>& poll = safe_point_ ? *safe_point_ : none;
    for (uint64_t gfn = gpa / kPage; gfn <= (gpa + len - 1) / kPage; gfn++) {
      if (!p2m_->get_page(gfn * kPage, poll)) return false;
      held_.push_back(gfn * kPage);
    }
    return true;
  }
  void safe_point() const {
    if (safe_point_ && *safe_point_) (*safe_point_)();
  }
  // Looks every page of the range up in the TLB, filling misses; counts stale hits: uses of a
  // translation after the flush that invalidated it completed (epoch at least two past the
  // entry's). A use between the fence and that flush's completion is allowed, as in Xen.
  void walk(uint64_t gpa, uint64_t len) const {
    if (!tlb_) return;
    for (uint64_t gfn = gpa / kPage; gfn <= (gpa + len - 1) / kPage; gfn++) {
      const uint32_t now = p2m_ ? p2m_->epoch(gfn * kPage) : 0;
      if (const SoftTlb::Entry* e = tlb_->lookup(vm_, gfn)) {
        const uint32_t age = now - e->epoch;
        if (age == 0 || age == 1) continue;
        tlb_->record_stale_hit();  // a flush was missed: refill so it is counted once
      }
      if (now % 2 == 0)
        tlb_->insert(vm_, gfn, mem_.host_base() + gfn * kPage, now);
      else
        tlb_->erase(vm_, gfn);  // fenced: nothing to cache
    }
  }

  const GuestMemory& mem_;
  uint32_t vm_;
  SoftTlb* tlb_;
  const std::function<void()>* safe_point_;
  P2mView* p2m_;
  mutable std::vector<uint64_t> held_;  // pages got by populate(), put back by the destructor
};

}  // namespace kvmscale::mm
