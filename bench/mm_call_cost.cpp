#include "bench/mm_call_cost.hpp"

#include <errno.h>
#include <sys/mman.h>

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

}  // namespace

MmCallCost measure_mm_calls(int reps) {
  std::vector<double> madv, unmap, prot;
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
    }
  } catch (...) {
    munmap(reclaimed, kPage);
    munmap(protected_page, kPage);
    throw;
  }
  munmap(reclaimed, kPage);
  munmap(protected_page, kPage);
  return {median_of(madv), median_of(unmap), median_of(prot)};
}

}  // namespace kvmscale::bench
