#include "app/host_info.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <numa.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "app/config.hpp"
#include "vmm/kvm.hpp"

namespace kvmscale::vmm {
namespace {

uint64_t read_number(const char* path) {
  std::ifstream f(path);
  uint64_t v = 0;
  f >> v;
  return v;
}

uint64_t meminfo_kib(const std::string& key) {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1));
  return 0;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

int64_t probe_uffd_features() {
  int fd = int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return -1;
  uffdio_api api{};
  api.api = UFFD_API;
  int64_t features = ioctl(fd, UFFDIO_API, &api) == 0 ? int64_t(api.features) : -1;
  close(fd);
  return features;
}

}  // namespace

HostInfo probe_host(const KvmSystem* kvm) {
  HostInfo h;
  utsname u{};
  if (uname(&u) == 0) {
    h.hostname = u.nodename;
    h.kernel = std::string(u.sysname) + " " + u.release + " " + u.machine;
  }
  h.cpu_model = cpu_model();
  h.online_cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  h.numa_nodes = numa_available() >= 0 ? numa_num_configured_nodes() : 1;
  h.mem_total = meminfo_kib("MemTotal") << 10;
  h.mem_available = meminfo_kib("MemAvailable") << 10;
  h.backend = detect_backend();
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    h.nofile_soft = rl.rlim_cur;
    h.nofile_hard = rl.rlim_max;
  }
  if (getrlimit(RLIMIT_NPROC, &rl) == 0) h.nproc_soft = rl.rlim_cur;
  h.threads_max = read_number("/proc/sys/kernel/threads-max");
  h.max_map_count = read_number("/proc/sys/vm/max_map_count");
  h.uffd_features = probe_uffd_features();
  if (kvm != nullptr) {
    h.kvm_available = true;
    h.kvm_api_version = kvm->api_version();
    const std::pair<const char*, long> caps[] = {
        {"user_memory", KVM_CAP_USER_MEMORY},   {"immediate_exit", KVM_CAP_IMMEDIATE_EXIT},
        {"ext_cpuid", KVM_CAP_EXT_CPUID},       {"nr_vcpus", KVM_CAP_NR_VCPUS},
        {"max_vcpus", KVM_CAP_MAX_VCPUS},       {"nr_memslots", KVM_CAP_NR_MEMSLOTS},
        {"irqchip", KVM_CAP_IRQCHIP},           {"sync_mmu", KVM_CAP_SYNC_MMU},
        {"set_tss_addr", KVM_CAP_SET_TSS_ADDR}, {"get_msr_features", KVM_CAP_GET_MSR_FEATURES}};
    for (auto [name, cap] : caps) h.kvm_caps[name] = kvm->check_extension(cap);
  }
  return h;
}

nlohmann::json HostInfo::to_json() const {
  return {
      {"hostname", hostname},
      {"kernel", kernel},
      {"cpu_model", cpu_model},
      {"online_cpus", online_cpus},
      {"numa_nodes", numa_nodes},
      {"mem_total", mem_total},
      {"mem_available", mem_available},
      {"kvm_available", kvm_available},
      {"backend", backend_name(backend)},
      {"kvm_api_version", kvm_api_version},
      {"kvm_caps", kvm_caps},
      {"limits",
       {{"nofile_soft", nofile_soft},
        {"nofile_hard", nofile_hard},
        {"nproc_soft", nproc_soft},
        {"threads_max", threads_max},
        {"max_map_count", max_map_count}}},
      {"userfaultfd",
       {{"available", uffd_features >= 0},
        {"features", uffd_features},
        {"write_protect", uffd_features >= 0 && (uffd_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)},
        {"thread_id", uffd_features >= 0 && (uffd_features & UFFD_FEATURE_THREAD_ID)}}}};
}

LimitCheck check_limits(HostInfo& h, uint32_t vms, uint32_t vcpus, uint64_t mem,
                        bool thread_per_vcpu) {
  LimitCheck c;
  const uint64_t reserve = 64;  // stdio, /dev/kvm, output files, sanitizer runtimes
  uint64_t fds = vms * fds_per_vm(vcpus) + reserve;
  if (fds > h.nofile_soft) {
    rlimit rl{h.nofile_soft, h.nofile_hard};
    if (fds <= h.nofile_hard) {
      rl.rlim_cur = fds;
      if (setrlimit(RLIMIT_NOFILE, &rl) == 0) h.nofile_soft = fds;
    }
    if (fds > h.nofile_soft)
      c.errors.push_back(std::to_string(vms) + " VMs need " + std::to_string(fds) +
                         " open files but RLIMIT_NOFILE is " + std::to_string(h.nofile_soft) +
                         " (hard " + std::to_string(h.nofile_hard) +
                         "): raise it (ulimit -n) or shard the VMs over several processes");
  }
  uint64_t threads = (thread_per_vcpu ? uint64_t{vms} * vcpus : uint64_t(h.online_cpus)) + 16;
  if (h.threads_max && threads > h.threads_max)
    c.errors.push_back("needs " + std::to_string(threads) + " threads but kernel.threads-max is " +
                       std::to_string(h.threads_max));
  if (h.nproc_soft != RLIM_INFINITY && threads > h.nproc_soft)
    c.errors.push_back("needs " + std::to_string(threads) + " threads but RLIMIT_NPROC is " +
                       std::to_string(h.nproc_soft) + ": raise it (ulimit -u)");
  uint64_t total = uint64_t{vms} * mem;
  if (h.mem_total && total > h.mem_total)
    c.errors.push_back("guest memory " + format_size(total) + " exceeds host memory " +
                       format_size(h.mem_total));
  else if (h.mem_available && total > h.mem_available)
    c.warnings.push_back("guest memory " + format_size(total) + " exceeds available memory " +
                         format_size(h.mem_available) + ": guests that touch it all will swap");
  // Each VM's mapping plus its vCPUs' kvm_run mappings.
  uint64_t maps = uint64_t{vms} * (2 + vcpus) + 1024;
  if (h.max_map_count && maps > h.max_map_count)
    c.errors.push_back("needs " + std::to_string(maps) +
                       " memory mappings but vm.max_map_count is " +
                       std::to_string(h.max_map_count));
  return c;
}

}  // namespace kvmscale::vmm
