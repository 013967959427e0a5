#include "app/admission.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "app/pod_runtime.hpp"
#include "guests/include/kvmscale_abi.h"
#include "vmm/guest_images.hpp"
#include "vmm/run_area.hpp"

namespace kvmscale::app {

namespace {
uint64_t pages(uint64_t bytes) { return (bytes + KS_PAGE_SIZE - 1) / KS_PAGE_SIZE * KS_PAGE_SIZE; }

// Built-in guests that touch free RAM: boot-zero zeroes all of it; fuzz and crash write where
// their arguments or random numbers say. The others run in their image, stacks and hypercall
// pages only.
bool touches_free_ram(const std::string& guest) {
  return guest == "boot-zero" || guest == "fuzz" || guest == "crash" ||
         guest.rfind("file:", 0) == 0;
}
}  // namespace

GuestFootprint guest_footprint(const RunConfig& cfg, const std::string& guest,
                               uint64_t image_size) {
  GuestFootprint f;
  // What write_boot_area and the guest runtime touch below KS_RAM_GPA (guests/include/
  // kvmscale_abi.h): GDT+TSS, PML4, PDPT, the page directories in use, boot info, per vCPU a
  // hypercall page, a VIF page and a stack, and the image.
  const uint64_t pds = (cfg.mem + (1ull << 30) - 1) >> 30;
  f.boot_bytes =
      (4 + pds) * KS_PAGE_SIZE + cfg.vcpus * (2 * KS_PAGE_SIZE + KS_STACK_SIZE) + pages(image_size);
  const uint64_t ram = cfg.mem - KS_RAM_GPA;
  if (!touches_free_ram(guest)) {
    f.ram_bytes = 0;
    f.assumption = guest + ": boot area only";
  } else if (!cfg.pod_target.empty()) {
    f.ram_bytes = cfg.pod_target_granules() * cfg.pod_granule;
    f.assumption = guest + ": free RAM up to the PoD target (" + format_size(f.ram_bytes) + ")";
  } else {
    f.ram_bytes = ram;
    f.assumption =
        guest + (guest.rfind("file:", 0) == 0 ? ": unknown guest, assumed to touch" : ": touches") +
        " all free RAM (" + format_size(ram) + ")";
  }
  return f;
}

std::vector<uint64_t> guest_image_sizes(const RunConfig& cfg) {
  std::vector<uint64_t> sizes;
  for (const auto& g : cfg.guest_list()) {
    std::error_code ec;
    uint64_t n = g.rfind("file:", 0) == 0 ? std::filesystem::file_size(g.substr(5), ec)
                                          : vmm::builtin_guest_image(g).size();
    sizes.push_back(ec ? 0 : n);
  }
  return sizes;
}

LimitCheck check_limits(HostInfo& h, const RunConfig& cfg,
                        const std::vector<uint64_t>& image_sizes) {
  LimitCheck c;
  const uint64_t vcpus = cfg.vcpus;
  // Fds and mappings are this process's: the VMs of its shard (all of them unless --procs).
  const uint64_t vms = cfg.shard_vms();

  // File descriptors: one per vCPU once set up, and some to spare.
  const uint64_t reserve = kSpareFds;
  // With PoD: a userfaultfd, an eventfd and an io_uring per fault thread (mm/fault_service.cpp).
  const uint64_t pod_fds = cfg.pod_target.empty() ? 0 : 2 + PodRuntime::fault_threads_for(cfg);
  const uint64_t fds = vms * fds_per_vm(cfg.vcpus) + reserve + pod_fds;
  if (fds > h.nofile_soft) {
    rlimit rl{h.nofile_soft, h.nofile_hard};
    if (fds <= h.nofile_hard) {
      rl.rlim_cur = fds;
      if (setrlimit(RLIMIT_NOFILE, &rl) == 0) h.nofile_soft = fds;
    }
    if (fds > h.nofile_soft)
      c.errors.push_back(std::to_string(vms) + " VMs of " + std::to_string(vcpus) +
                         " vCPU(s) need " + std::to_string(fds) + " open files (one per vCPU, " +
                         std::to_string(reserve) + " spare) but RLIMIT_NOFILE is " +
                         std::to_string(h.nofile_soft) + " (hard " + std::to_string(h.nofile_hard) +
                         "): at most " +
                         std::to_string(vms_fitting_fds(h.nofile_hard, cfg.vcpus, pod_fds)) +
                         " such VMs per process; raise ulimit -n or use --procs");
  }

  // Address space: the process's guest memory is one reservation (mm::Arena).
  const uint64_t reserved = vms * cfg.mem;
  if (reserved > kMaxGuestReservation)
    c.errors.push_back(std::to_string(vms) + " VMs of " + format_size(cfg.mem) + " reserve " +
                       format_size(reserved) + " of address space in one process, over the " +
                       format_size(kMaxGuestReservation) + " kvmscale allows of the 128T a " +
                       "process has: use --procs or a smaller --mem");

  // Mappings: a kvm_run page per vCPU; with PoD each VM's RAM is its own userfaultfd range.
  const uint64_t maps = vms * (vcpus + (cfg.pod_target.empty() ? 0 : 2)) + 1024;
  if (h.max_map_count && maps > h.max_map_count)
    c.errors.push_back("needs " + std::to_string(maps) +
                       " memory mappings but vm.max_map_count is " +
                       std::to_string(h.max_map_count) + ": raise it (sysctl) or use --procs");

  // The parent of a sharded run checked the host for the whole run before starting processes.
  if (cfg.shard.vms) return c;
  LimitCheck host = check_host_limits(h, cfg, image_sizes);
  auto append = [](std::vector<std::string>& to, const std::vector<std::string>& from) {
    to.insert(to.end(), from.begin(), from.end());
  };
  append(c.errors, host.errors);
  append(c.warnings, host.warnings);
  append(c.assumptions, host.assumptions);
  c.memory_needed = host.memory_needed;
  return c;
}

LimitCheck check_host_limits(const HostInfo& h, const RunConfig& cfg,
                             const std::vector<uint64_t>& image_sizes) {
  LimitCheck c;
  const bool thread_per_vcpu = cfg.sched == "host";
  const uint64_t vcpus = cfg.vcpus, vms = cfg.vms;
  // Ours: a thread per vCPU with --sched host, else a thread per pCPU; plus KVM's own worker
  // per VM (kvm-nx-lpage-recovery, a task of this process on recent kernels), which counts against
  // kernel.threads-max and the pids cgroup.
  const uint64_t ours = (thread_per_vcpu ? vms * vcpus : uint64_t(cfg.effective_pcpus())) + 16;
  // The kernel's workers are tasks of the user too (RLIMIT_NPROC, pids.max), as are the
  // teardown threads (vmm::RunArea).
  const uint64_t threads = ours + vms + vmm::RunArea::kReleaseThreads;
  if (h.threads_max && threads > h.threads_max)
    c.errors.push_back("needs " + std::to_string(threads) + " threads (" + std::to_string(ours) +
                       " of kvmscale's, one KVM worker per VM) but kernel.threads-max is " +
                       std::to_string(h.threads_max));
  if (h.nproc_soft != RLIM_INFINITY && threads > h.nproc_soft)
    c.errors.push_back("needs " + std::to_string(threads) + " tasks (" + std::to_string(ours) +
                       " of kvmscale's, one KVM worker per VM, teardown) but RLIMIT_NPROC is " +
                       std::to_string(h.nproc_soft) + ": raise it (ulimit -u)");
  if (h.pid_max && threads > h.pid_max / 2)
    c.warnings.push_back("needs " + std::to_string(threads) +
                         " tasks, over half of "
                         "kernel.pid_max (" +
                         std::to_string(h.pid_max) +
                         ") shared by every task of the host: thread starts may fail");

  // Memory: what the guests touch plus the kernel's share, not vms x --mem.
  const std::vector<std::string> guests = cfg.guest_list();
  uint64_t touched = 0;
  for (size_t g = 0; g < guests.size(); g++) {
    const uint64_t n = vms / guests.size() + (g < vms % guests.size() ? 1 : 0);  // VM i: i % size
    if (n == 0) continue;
    GuestFootprint f = guest_footprint(cfg, guests[g], g < image_sizes.size() ? image_sizes[g] : 0);
    touched += n * (f.boot_bytes + f.ram_bytes);
    c.assumptions.push_back(std::to_string(n) + " VM(s) of " + f.assumption + ", boot area " +
                            format_size(f.boot_bytes));
  }
  const uint64_t kernel = vms * kKernelBytesPerVm + vms * vcpus * kKernelBytesPerVcpu +
                          (thread_per_vcpu ? vms * vcpus * kBytesPerVcpuThread : 0);
  c.assumptions.push_back(
      "kernel and VMM " + format_size(kernel) + " (estimated " + format_size(kKernelBytesPerVm) +
      " per VM, " + format_size(kKernelBytesPerVcpu) + " per vCPU" +
      (thread_per_vcpu ? ", " + format_size(kBytesPerVcpuThread) + " per vCPU thread" : "") + ")");
  c.memory_needed = touched + kernel;
  if (h.mem_total && c.memory_needed > h.mem_total)
    c.errors.push_back("the run would use " + format_size(c.memory_needed) +
                       " of host memory but the host has " + format_size(h.mem_total) + " (" +
                       format_size(touched) + " touched by guests, " + format_size(kernel) +
                       " kernel and VMM; guest RAM itself is reserved, not used)");
  else if (h.mem_available && c.memory_needed > h.mem_available)
    c.warnings.push_back("the run would use " + format_size(c.memory_needed) +
                         " of host memory but only " + format_size(h.mem_available) +
                         " is available: it may swap or meet the OOM killer");
  return c;
}

}  // namespace kvmscale::app
