// Facts about the host a run executes on, and the limits that bound how many VMs it can hold.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "vmm/backend.hpp"

namespace kvmscale::vmm {

class KvmSystem;

struct HostInfo {
  std::string hostname;  // tells the nodes of a Slurm matrix apart (compare --by host)
  std::string kernel;
  std::string cpu_model;
  int online_cpus = 0;
  int numa_nodes = 0;
  uint64_t mem_total = 0, mem_available = 0;
  bool kvm_available = false;
  Backend backend = Backend::Unknown;
  int kvm_api_version = 0;
  std::map<std::string, int> kvm_caps;  // capabilities kvmscale relies on or reports
  uint64_t nofile_soft = 0, nofile_hard = 0;
  uint64_t nproc_soft = 0;
  uint64_t threads_max = 0;
  uint64_t max_map_count = 0;
  // userfaultfd (populate-on-demand): -1 unavailable, else the UFFDIO_API feature bits.
  int64_t uffd_features = -1;
  nlohmann::json to_json() const;
};

// kvm may be null (no /dev/kvm): then only host facts are filled in.
HostInfo probe_host(const KvmSystem* kvm);

struct LimitCheck {
  std::vector<std::string> errors;    // the run cannot start
  std::vector<std::string> warnings;  // it may, but say so
};
// What `vms` VMs of `vcpus` vCPUs and `mem` bytes need from this host, with host threads per
// vCPU when `thread_per_vcpu`. Raises the soft RLIMIT_NOFILE to what is needed when it can.
LimitCheck check_limits(HostInfo& host, uint32_t vms, uint32_t vcpus, uint64_t mem,
                        bool thread_per_vcpu);
// File descriptors one VM costs: the VM fd and one per vCPU.
inline uint64_t fds_per_vm(uint32_t vcpus) { return 1ull + vcpus; }

}  // namespace kvmscale::vmm
