// What one mapping change costs this process: madvise(MADV_DONTNEED), munmap and mprotect of a
// populated 4 KiB page. Each call runs the mmu-notifier invalidate_range_start of every
// subscription on the process's mm (mm/mmu_notifier.c, __mmu_notifier_invalidate_range_start),
// and every KVM VM of the process is one subscription: the cost grows with the VMs it holds.
// MADV_DONTNEED is what populate-on-demand reclaim does to a zero page, after fencing it with a
// userfaultfd write-protect (UFFDIO_WRITEPROTECT), itself timed here.
#pragma once

namespace kvmscale::bench {

struct MmCallCost {
  double madvise_dontneed_ns = 0, munmap_ns = 0, mprotect_ns = 0;  // medians, one call each
  double uffd_writeprotect_ns = 0;  // 0: userfaultfd write-protect is not available here
};

// `reps` timed calls of each kind, interleaved; the page is populated (written) before each.
MmCallCost measure_mm_calls(int reps);

}  // namespace kvmscale::bench
