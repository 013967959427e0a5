// One VM's guest-physical memory: an anonymous mapping (its own, or a slot of a run's Arena)
// split into KVM memslots, and the only bounds-checked path by which kvmscale reads or writes
// guest memory on a guest's behalf.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kvmscale::mm {

class GuestMemory {
 public:
  // `size` bytes of guest-physical memory starting at GPA 0. Throws std::system_error.
  explicit GuestMemory(uint64_t size);
  // `size` bytes at `base`, which the caller maps and unmaps (a slot of a run's mm::Arena).
  GuestMemory(uint8_t* base, uint64_t size) : size_(size), base_(base), owned_(false) {}
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  uint64_t size() const { return size_; }
  uint8_t* host_base() const { return base_; }

  // Host pointer for [gpa, gpa+len) if the whole range is guest memory; nullptr otherwise.
  // Overflow-safe: a hostile gpa/len pair can never produce a pointer outside the mapping.
  uint8_t* translate(uint64_t gpa, uint64_t len) const {
    if (len > size_ || gpa > size_ - len) return nullptr;
    return base_ + gpa;
  }
  template <typename T>
  T* object_at(uint64_t gpa) const {
    return reinterpret_cast<T*>(translate(gpa, sizeof(T)));
  }
  // Binds the memory to these NUMA nodes (mbind MPOL_BIND, moving pages already touched).
  // Returns an error message, empty on success.
  std::string bind_to_nodes(const std::vector<int>& nodes) const;
  // Copies a NUL-terminated guest string of at most max_len bytes (excluding NUL) into out.
  std::optional<size_t> read_cstring(uint64_t gpa, std::span<char> out) const;

 private:
  uint64_t size_;
  uint8_t* base_;
  bool owned_ = true;
};

}  // namespace kvmscale::mm
