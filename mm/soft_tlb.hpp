// A pCPU's software TLB: a small direct-mapped cache of guest-physical page -> host address used
// by exit handlers, standing in for the hardware's EPT TLB. PoD reclaim changes p2m entries; the
// cross-call flush must invalidate every pCPU's entries for that VM. A missed flush leaves a stale
// entry: lookup() can validate each hit against the p2m (a check the caller supplies) and counts
// stale hits, so tests catch a missing invalidation instead of silently using a freed page.
#pragma once

#include <array>
#include <cstdint>
#include <functional>

namespace kvmscale::mm {

class SoftTlb {
 public:
  static constexpr size_t kEntries = 64;
  // (vm, gfn) -> still mapped in the p2m? Called on every hit when set (debug validation).
  using Validator = std::function<bool(uint32_t vm, uint64_t gfn)>;

  explicit SoftTlb(Validator validate = {}) : validate_(std::move(validate)) {}

  uint8_t* lookup(uint32_t vm, uint64_t gfn) {
    Slot& s = slot(vm, gfn);
    if (!s.valid || s.vm != vm || s.gfn != gfn) {
      misses_++;
      return nullptr;
    }
    hits_++;
    if (validate_ && !validate_(vm, gfn)) stale_hits_++;
    return s.hva;
  }
  void insert(uint32_t vm, uint64_t gfn, uint8_t* hva) { slot(vm, gfn) = {true, vm, gfn, hva}; }
  // The flush: drop every entry of `vm`.
  void invalidate_vm(uint32_t vm) {
    for (Slot& s : slots_)
      if (s.valid && s.vm == vm) s.valid = false;
    flushes_++;
  }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  uint64_t stale_hits() const { return stale_hits_; }
  uint64_t flushes() const { return flushes_; }

 private:
  struct Slot {
    bool valid = false;
    uint32_t vm = 0;
    uint64_t gfn = 0;
    uint8_t* hva = nullptr;
  };
  Slot& slot(uint32_t vm, uint64_t gfn) {
    return slots_[(gfn ^ (uint64_t(vm) * 0x9e3779b9u)) % kEntries];
  }
  std::array<Slot, kEntries> slots_{};
  Validator validate_;
  uint64_t hits_ = 0, misses_ = 0, stale_hits_ = 0, flushes_ = 0;
};

}  // namespace kvmscale::mm
