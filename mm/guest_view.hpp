// GuestView: how an exit handler on one pCPU touches a guest's memory on its behalf. Every
// access is bounds-checked by GuestMemory and goes through that pCPU's software TLB; before a
// translation the pCPU passes a safe point (answers pending flushes), so a flush it was excused
// from while stalled is applied before it can use an old translation.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>

#include "mm/guest_memory.hpp"
#include "mm/soft_tlb.hpp"

namespace kvmscale::mm {

// The p2m's epochs: a counter per guest page, bumped when the page's backing goes back to the
// host (PoD reclaim). Read without locks.
class P2mEpochs {
 public:
  virtual ~P2mEpochs() = default;
  virtual uint32_t epoch(uint64_t gpa) const = 0;
};

class GuestView {
 public:
  static constexpr uint64_t kPage = 4096;
  // tlb, safe_point and epochs may be null (no TLB: direct translation).
  GuestView(const GuestMemory& mem, uint32_t vm, SoftTlb* tlb,
            const std::function<void()>* safe_point, const P2mEpochs* epochs)
      : mem_(mem), vm_(vm), tlb_(tlb), safe_point_(safe_point), epochs_(epochs) {}

  // Host pointer for [gpa, gpa+len), nullptr unless it is all guest memory.
  uint8_t* translate(uint64_t gpa, uint64_t len) const {
    uint8_t* p = mem_.translate(gpa, len);
    if (p && len) {
      safe_point();
      walk(gpa, len);
    }
    return p;
  }
  // A NUL-terminated guest string of at most out.size() - 1 bytes (see GuestMemory).
  std::optional<size_t> read_cstring(uint64_t gpa, std::span<char> out) const {
    if (!mem_.translate(gpa, 1)) return std::nullopt;
    safe_point();
    auto n = mem_.read_cstring(gpa, out);
    walk(gpa, n ? *n + 1 : 1);  // the string and its NUL, which are guest memory
    return n;
  }

 private:
  void safe_point() const {
    if (safe_point_ && *safe_point_) (*safe_point_)();
  }
  // Looks every page of the range up in the TLB, filling misses; counts stale hits.
  void walk(uint64_t gpa, uint64_t len) const {
    if (!tlb_) return;
    for (uint64_t gfn = gpa / kPage; gfn <= (gpa + len - 1) / kPage; gfn++) {
      const uint32_t now = epochs_ ? epochs_->epoch(gfn * kPage) : 0;
      if (const SoftTlb::Entry* e = tlb_->lookup(vm_, gfn)) {
        if (e->epoch == now) continue;
        tlb_->record_stale_hit();  // a flush was missed: refill so it is counted once
      }
      tlb_->insert(vm_, gfn, mem_.host_base() + gfn * kPage, now);
    }
  }

  const GuestMemory& mem_;
  uint32_t vm_;
  SoftTlb* tlb_;
  const std::function<void()>* safe_point_;
  const P2mEpochs* epochs_;
};

}  // namespace kvmscale::mm
