// A set of pCPU (or context) indices that threads update and read concurrently: one atomic word
// per 64 members. Every operation names its memory order: the credit scheduler's idle mask is a
// hint (relaxed), the p2m masks are a store-load pair (seq_cst, sched/p2m.hpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "sched/cpuset.hpp"

namespace kvmscale::sched {

class AtomicCpuSet {
 public:
  explicit AtomicCpuSet(uint32_t size = 0)
      : size_(size), words_(std::make_unique<std::atomic<uint64_t>[]>(words())) {}
  uint32_t size() const { return size_; }

  void set(uint32_t i, std::memory_order mo) { words_[i / 64].fetch_or(bit(i), mo); }
  void clear(uint32_t i, std::memory_order mo) { words_[i / 64].fetch_and(~bit(i), mo); }
  bool test(uint32_t i, std::memory_order mo) const { return words_[i / 64].load(mo) & bit(i); }
  // Clears member i; true if this call cleared it (it was set).
  bool test_and_clear(uint32_t i, std::memory_order mo) {
    return test(i, mo) && (words_[i / 64].fetch_and(~bit(i), mo) & bit(i));
  }
  // Makes every index below size() a member.
  void fill(std::memory_order mo) {
    for (uint32_t w = 0; w < words(); w++)
      words_[w].store(w + 1 < words() || size_ % 64 == 0 ? ~0ull : (1ull << (size_ % 64)) - 1, mo);
  }
  // The members, word by word (not one atomic snapshot of the whole set).
  CpuSet snapshot(std::memory_order mo) const {
    CpuSet s(size_);
    snapshot_into(s, mo);
    return s;
  }
  // The same into `out`, reusing its storage once it has this set's size (no allocation).
  void snapshot_into(CpuSet& out, std::memory_order mo) const {
    if (out.size() != size_) out = CpuSet(size_);
    for (uint32_t w = 0; w < words(); w++) out.set_word(w, words_[w].load(mo));
  }

 private:
  static uint64_t bit(uint32_t i) { return 1ull << (i % 64); }
  uint32_t words() const { return (size_ + 63) / 64; }
  uint32_t size_;
  std::unique_ptr<std::atomic<uint64_t>[]> words_;
};

}  // namespace kvmscale::sched
