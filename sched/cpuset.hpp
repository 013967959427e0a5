// A set of pCPU indices of any size (hosts have hundreds of cores).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvmscale::sched {

class CpuSet {
 public:
  CpuSet() = default;
  explicit CpuSet(uint32_t size, bool all = false) : size_(size), words_((size + 63) / 64, 0) {
    if (all)
      for (uint32_t i = 0; i < size; i++) set(i);
  }
  static CpuSet single(uint32_t size, uint32_t cpu) {
    CpuSet s(size);
    s.set(cpu);
    return s;
  }
  uint32_t size() const { return size_; }
  void set(uint32_t i) { words_[i / 64] |= 1ull << (i % 64); }
  void clear(uint32_t i) { words_[i / 64] &= ~(1ull << (i % 64)); }
  bool test(uint32_t i) const { return i < size_ && (words_[i / 64] >> (i % 64)) & 1; }
  // Members 64*w .. 64*w+63 at once (bits past size() must be clear).
  void set_word(uint32_t w, uint64_t bits) { words_[w] = bits; }
  uint32_t count() const {
    uint32_t n = 0;
    for (uint64_t w : words_) n += __builtin_popcountll(w);
    return n;
  }
  bool empty() const {
    for (uint64_t w : words_)
      if (w) return false;
    return true;
  }
  // Both sets must have the same size.
  bool subset_of(const CpuSet& o) const {
    for (size_t i = 0; i < words_.size(); i++)
      if (words_[i] & ~o.words_[i]) return false;
    return true;
  }
  bool intersects(const CpuSet& o) const {
    for (size_t i = 0; i < words_.size(); i++)
      if (words_[i] & o.words_[i]) return true;
    return false;
  }
  CpuSet& operator&=(const CpuSet& o) {
    for (size_t i = 0; i < words_.size(); i++) words_[i] &= o.words_[i];
    return *this;
  }
  bool operator==(const CpuSet&) const = default;
  // cpumask_cycle: the first member after n, wrapping around (n itself last); size() if empty.
  uint32_t cycle(uint32_t n) const {
    for (uint32_t i = 1; i <= size_; i++)
      if (test((n + i) % size_)) return (n + i) % size_;
    return size_;
  }
  // Ascending. Word by word: O(size / 64 + members), not a test of every index.
  std::vector<uint32_t> members() const {
    std::vector<uint32_t> m;
    for (uint32_t w = 0; w < words_.size(); w++)
      for (uint64_t bits = words_[w]; bits; bits &= bits - 1)
        m.push_back(w * 64 + uint32_t(__builtin_ctzll(bits)));
    return m;
  }
  std::string to_string() const {  // "0-3,6"
    std::string s;
    for (uint32_t i = 0; i < size_;) {
      if (!test(i)) {
        i++;
        continue;
      }
      uint32_t j = i;
      while (j + 1 < size_ && test(j + 1)) j++;
      s += (s.empty() ? "" : ",") + std::to_string(i);
      if (j > i) s += "-" + std::to_string(j);
      i = j + 1;
    }
    return s;
  }

 private:
  uint32_t size_ = 0;
  std::vector<uint64_t> words_;
};

}  // namespace kvmscale::sched
