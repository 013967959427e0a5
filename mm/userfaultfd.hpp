// A userfaultfd with the operations populate-on-demand needs. Blocking reads (io_uring polls it).
#pragma once

#include <cstdint>

namespace kvmscale::mm {

class Userfaultfd {
 public:
  // Opens it with UFFD_FEATURE_THREAD_ID and write-protect faults. Throws std::system_error.
  Userfaultfd();
  ~Userfaultfd();
  Userfaultfd(const Userfaultfd&) = delete;
  Userfaultfd& operator=(const Userfaultfd&) = delete;

  int fd() const { return fd_; }
  // MISSING and WP faults of [addr, addr+len) come to this fd. Throws std::system_error.
  void register_range(void* addr, uint64_t len);
  void unregister_range(void* addr, uint64_t len);
  // 0, or -errno (-EEXIST: already populated, a duplicate fault).
  int zeropage(uint64_t addr, uint64_t len);
  int writeprotect(uint64_t addr, uint64_t len, bool protect);
  int wake(uint64_t addr, uint64_t len);

 private:
  int fd_ = -1;
};

}  // namespace kvmscale::mm
