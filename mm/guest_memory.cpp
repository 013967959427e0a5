#include "mm/guest_memory.hpp"

#include <numa.h>
#include <numaif.h>
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

GuestMemory::~GuestMemory() {
  if (owned_) ::munmap(base_, size_);
}

std::string GuestMemory::bind_to_nodes(const std::vector<int>& nodes) const {
  if (numa_available() < 0) return "NUMA is not available on this host";
  bitmask* mask = numa_allocate_nodemask();
  for (int n : nodes) numa_bitmask_setbit(mask, unsigned(n));
  long r = mbind(base_, size_, MPOL_BIND, mask->maskp, mask->size + 1, MPOL_MF_MOVE);
  int err = errno;
  numa_free_nodemask(mask);
  return r == 0 ? std::string() : std::string("mbind: ") + std::strerror(err);
}

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
