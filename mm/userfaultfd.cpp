#include "mm/userfaultfd.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace kvmscale::mm {

Userfaultfd::Userfaultfd() {
  // Non-blocking: io_uring then waits for it with internal poll instead of parking a blocking
  // read in an io-wq worker, which cannot be cancelled cleanly when the service stops.
  fd_ = int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "userfaultfd");
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_THREAD_ID;
  if (ioctl(fd_, UFFDIO_API, &api) != 0) {
    int e = errno;
    close(fd_);
    throw std::system_error(e, std::generic_category(), "UFFDIO_API");
  }
  if (!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
    close(fd_);
    throw std::system_error(ENOTSUP, std::generic_category(),
                            "userfaultfd without write-protect (needed to fence PoD reclaim)");
  }
}

Userfaultfd::~Userfaultfd() {
  if (fd_ >= 0) close(fd_);
}

void Userfaultfd::register_range(void* addr, uint64_t len) {
  uffdio_register r{};
  r.range.start = reinterpret_cast<uint64_t>(addr);
  r.range.len = len;
  r.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
  if (ioctl(fd_, UFFDIO_REGISTER, &r) != 0)
    throw std::system_error(errno, std::generic_category(), "UFFDIO_REGISTER");
}

void Userfaultfd::unregister_range(void* addr, uint64_t len) {
  uffdio_range r{reinterpret_cast<uint64_t>(addr), len};
  ioctl(fd_, UFFDIO_UNREGISTER, &r);
}

int Userfaultfd::zeropage(uint64_t addr, uint64_t len) {
  uffdio_zeropage z{};
  z.range.start = addr;
  z.range.len = len;
  return ioctl(fd_, UFFDIO_ZEROPAGE, &z) == 0 ? 0 : -errno;
}

int Userfaultfd::writeprotect(uint64_t addr, uint64_t len, bool protect) {
  uffdio_writeprotect w{};
  w.range.start = addr;
  w.range.len = len;
  w.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0;  // unprotecting also wakes writers
  return ioctl(fd_, UFFDIO_WRITEPROTECT, &w) == 0 ? 0 : -errno;
}

int Userfaultfd::wake(uint64_t addr, uint64_t len) {
  uffdio_range r{addr, len};
  return ioctl(fd_, UFFDIO_WAKE, &r) == 0 ? 0 : -errno;
}

}  // namespace kvmscale::mm
