#include "bench/mm_call_cost.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <system_error>
#include <vector>

#include "vmm/clock.hpp"

namespace kvmscale::bench {
namespace {

constexpr size_t kPage = 4096;

double median_of(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

uint8_t* map_page() {
  void* p = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap of a page");
  return static_cast<uint8_t*>(p);
}

void check(int r, const char* what) {
  if (r != 0) throw std::system_error(errno, std::generic_category(), what);
}

// A userfaultfd registered for write-protect on one populated page, as PoD's fence uses it
// (PodVm::fence); fd < 0 where the kernel has no userfaultfd write-protect.
struct WriteProtectedPage {
  WriteProtectedPage() : page(map_page()) {
    page[0] = 1;  // populated before registering
    fd = int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    uffdio_api api{};
    api.api = UFFD_API;
    uffdio_register reg{};
    reg.range = {reinterpret_cast<uint64_t>(page), kPage};
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (fd >= 0 &&
        (ioctl(fd, UFFDIO_API, &api) != 0 || !(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) ||
         ioctl(fd, UFFDIO_REGISTER, &reg) != 0)) {
      close(fd);
      fd = -1;
    }
  }
  ~WriteProtectedPage() {
    if (fd >= 0) close(fd);
    munmap(page, kPage);
  }
  // Write-protects the page (timed), then lifts it again; ns, or 0 without write-protect.
  double time_fence() {
    if (fd < 0) return 0;
    uffdio_writeprotect wp{};
    wp.range = {reinterpret_cast<uint64_t>(page), kPage};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    uint64_t t0 = now_ns();
    if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) != 0)
      throw std::system_error(errno, std::generic_category(), "UFFDIO_WRITEPROTECT");
    double ns = double(now_ns() - t0);
    wp.mode = 0;
    if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp) != 0)
      throw std::system_error(errno, std::generic_category(), "UFFDIO_WRITEPROTECT (lift)");
    return ns;
  }
  uint8_t* page;
  int fd = -1;
};

}  // namespace

MmCallCost measure_mm_calls(int reps) {
  std::vector<double> madv, unmap, prot, fence;
  WriteProtectedPage fenced;
  uint8_t* reclaimed = map_page();
  uint8_t* protected_page = map_page();
  try {
    for (int i = 0; i < reps; i++) {
      reclaimed[0] = 1;  // populated: the kernel has a page to drop
      uint64_t t0 = now_ns();
      check(madvise(reclaimed, kPage, MADV_DONTNEED), "madvise(MADV_DONTNEED)");
      madv.push_back(double(now_ns() - t0));

      uint8_t* gone = map_page();
      gone[0] = 1;
      t0 = now_ns();
      check(munmap(gone, kPage), "munmap");
      unmap.push_back(double(now_ns() - t0));

      protected_page[0] = 1;
      t0 = now_ns();
      check(mprotect(protected_page, kPage, PROT_READ), "mprotect");
      prot.push_back(double(now_ns() - t0));
      check(mprotect(protected_page, kPage, PROT_READ | PROT_WRITE), "mprotect");

      fence.push_back(fenced.time_fence());
    }
  } catch (...) {
    munmap(reclaimed, kPage);
    munmap(protected_page, kPage);
    throw;
  }
  munmap(reclaimed, kPage);
  munmap(protected_page, kPage);
  return {median_of(madv), median_of(unmap), median_of(prot), median_of(fence)};
}

}  // namespace kvmscale::bench
