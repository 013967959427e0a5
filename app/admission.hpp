// Whether this host can hold a run: file descriptors, threads, memory mappings and the memory
// the guests will actually touch (guest RAM is reserved with MAP_NORESERVE, so --mem alone costs
// address space, not memory). Says what it assumed; refuses only what cannot fit.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "app/host_info.hpp"

namespace kvmscale::app {

// Host memory per VM, per vCPU and per vCPU thread (--sched host) that admission assumes on top
// of what guests touch: KVM's VM and vCPU structures and worker thread, the kvm_run page,
// shadow or EPT tables of a small guest, a thread's kernel stack and touched user stack. An
// estimate from the drop in MemAvailable while 10,000 idle 1-vCPU VMs ran on this KVM-PVM host
// (kernel 6.18: ~610 KiB per VM all told, docs/scale.md); the record reports what the run
// really took (run.resources).
inline constexpr uint64_t kKernelBytesPerVm = 384ull << 10;
inline constexpr uint64_t kKernelBytesPerVcpu = 128ull << 10;
inline constexpr uint64_t kBytesPerVcpuThread = 64ull << 10;

// Host memory one VM will touch, and why.
struct GuestFootprint {
  uint64_t boot_bytes = 0;  // the boot area kvmscale writes and the guest's stacks
  uint64_t ram_bytes = 0;   // free RAM the guest touches (its working set where known)
  std::string assumption;   // e.g. "idle: boot area only"
};
// `guest` is a built-in name or "file:PATH"; `image_size` its bytes. With PoD the RAM a guest
// can hold is at most the PoD target.
GuestFootprint guest_footprint(const RunConfig& cfg, const std::string& guest, uint64_t image_size);

struct LimitCheck {
  std::vector<std::string> errors;       // the run cannot start
  std::vector<std::string> warnings;     // it may, but say so
  std::vector<std::string> assumptions;  // what the memory check assumed (in the record)
  uint64_t memory_needed = 0;            // bytes of host memory the run is expected to use
};
// The size of each guest list entry's image (0 where a file cannot be read).
std::vector<uint64_t> guest_image_sizes(const RunConfig& cfg);
// Guest memory one process may reserve (of the 128 TiB of an x86-64 process's address space).
inline constexpr uint64_t kMaxGuestReservation = 64ull << 40;
// Fds a process keeps beyond its VMs' (stdio, /dev/kvm, records, the VM fds of VMs being
// created: at most kCreationWorkers at once).
inline constexpr uint64_t kSpareFds = 64;
inline constexpr int kCreationWorkers = 8;
// File descriptors one VM costs once set up: one per vCPU (the VM fd is closed: vmm/vm.hpp).
inline uint64_t fds_per_vm(uint32_t vcpus) { return vcpus; }
// VMs of `vcpus` vCPUs one process can hold under an fd limit of `nofile`, besides `other_fds`.
inline uint64_t vms_fitting_fds(uint64_t nofile, uint32_t vcpus, uint64_t other_fds = 0) {
  const uint64_t spare = kSpareFds + other_fds;
  return nofile > spare ? (nofile - spare) / fds_per_vm(vcpus) : 0;
}
// What the run needs from this host: fds and mappings for the VMs of this process (its shard
// under --procs), threads and memory for the whole run. `image_sizes[i]` is the size of guest
// list entry i (0 where unknown). Raises the soft RLIMIT_NOFILE to what is needed when it can.
LimitCheck check_limits(HostInfo& host, const RunConfig& cfg,
                        const std::vector<uint64_t>& image_sizes);
// Only the limits shared by every process of a sharded run (threads, memory), for its parent
// before it starts them.
LimitCheck check_host_limits(const HostInfo& host, const RunConfig& cfg,
                             const std::vector<uint64_t>& image_sizes);

}  // namespace kvmscale::app
