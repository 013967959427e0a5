// A pCPU's software TLB: a small direct-mapped cache of guest-physical page -> host address used
// by exit handlers (through mm::GuestView), standing in for the hardware's EPT TLB. PoD reclaim
// changes p2m entries; the cross-call flush must invalidate every pCPU's entries for that VM.
// Each entry keeps the p2m epoch of its page at fill time: a hit whose page has been given back
// to the host since (a newer epoch) is a missed invalidation, counted as a stale hit, so tests
// and runs catch it instead of silently using a freed page.
//
// Single-threaded: only its pCPU (context) thread uses it, flushes included (they run there).
#pragma once

#include <array>
#include <cstdint>

namespace kvmscale::mm {

class SoftTlb {
 public:
  static constexpr size_t kEntries = 64;
  struct Entry {
    bool valid = false;
    uint32_t vm = 0;
    uint64_t gfn = 0;
    uint8_t* hva = nullptr;
    uint32_t epoch = 0;  // the page's p2m epoch when the entry was filled
  };

  // The entry for (vm, gfn), or nullptr on a miss.
  const Entry* lookup(uint32_t vm, uint64_t gfn) {
    Entry& e = slot(vm, gfn);
    if (!e.valid || e.vm != vm || e.gfn != gfn) {
      misses_++;
      return nullptr;
    }
    hits_++;
    return &e;
  }
  void insert(uint32_t vm, uint64_t gfn, uint8_t* hva, uint32_t epoch = 0) {
    slot(vm, gfn) = {true, vm, gfn, hva, epoch};
  }
  void record_stale_hit() { stale_hits_++; }
  void erase(uint32_t vm, uint64_t gfn) {
    Entry& e = slot(vm, gfn);
    if (e.valid && e.vm == vm && e.gfn == gfn) e.valid = false;
  }
  // The flush: drop every entry of `vm`.
  void invalidate_vm(uint32_t vm) {
    for (Entry& e : slots_)
      if (e.valid && e.vm == vm) e.valid = false;
    flushes_++;
  }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  uint64_t stale_hits() const { return stale_hits_; }
  uint64_t flushes() const { return flushes_; }

 private:
  Entry& slot(uint32_t vm, uint64_t gfn) {
    return slots_[(gfn ^ (uint64_t(vm) * 0x9e3779b9u)) % kEntries];
  }
  std::array<Entry, kEntries> slots_{};
  uint64_t hits_ = 0, misses_ = 0, stale_hits_ = 0, flushes_ = 0;
};

}  // namespace kvmscale::mm
