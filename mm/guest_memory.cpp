#include "mm/guest_memory.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace kvmscale::mm {

GuestMemory::GuestMemory(uint64_t size) : size_(size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap guest memory");
  base_ = static_cast<uint8_t*>(p);
}

GuestMemory::~GuestMemory() { ::munmap(base_, size_); }

std::optional<size_t> GuestMemory::read_cstring(uint64_t gpa, std::span<char> out) const {
  if (out.empty()) return std::nullopt;
  for (size_t i = 0; i < out.size(); i++) {
    const uint8_t* c = translate(gpa + i, 1);
    if (c == nullptr || gpa + i < gpa) return std::nullopt;
    out[i] = static_cast<char>(*c);
    if (*c == 0) return i;
  }
  return std::nullopt;  // no NUL within the limit
}

}  // namespace kvmscale::mm
