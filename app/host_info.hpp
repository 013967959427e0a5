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
}

namespace kvmscale::app {

// A NUMA node as /sys/devices/system/node/nodeN shows it.
struct NumaNode {
  int node = 0;
  std::string cpus;        // cpulist, e.g. "0-3,8-11"
  uint64_t mem_total = 0;  // bytes
};

struct HostInfo {
  std::string hostname;  // tells the nodes of a Slurm matrix apart (compare --by host)
  std::string kernel;
  std::string cpu_model;
  std::string microcode;       // revision as /proc/cpuinfo shows it ("" where it shows none)
  int smt_active = -1;         // /sys/devices/system/cpu/smt/active: 1, 0, or -1 unknown
  std::string smt_control;     // on, off, forceoff, notsupported, notimplemented ("" unknown)
  int threads_per_core = 0;    // most hardware threads of one core (0: unknown)
  std::vector<NumaNode> numa;  // empty where the kernel shows no node directory
  // /sys/module/kvm*/parameters: module -> parameter -> value (those that can be read).
  std::map<std::string, std::map<std::string, std::string>> kvm_params;
  int online_cpus = 0;
  int numa_nodes = 0;
  uint64_t mem_total = 0, mem_available = 0;
  bool kvm_available = false;
  vmm::Backend backend = vmm::Backend::Unknown;
  int kvm_api_version = 0;
  std::map<std::string, int> kvm_caps;  // capabilities kvmscale relies on or reports
  uint64_t nofile_soft = 0, nofile_hard = 0;
  uint64_t nproc_soft = 0;
  uint64_t threads_max = 0;
  uint64_t pid_max = 0;  // kernel.pid_max: tasks of the whole host
  uint64_t max_map_count = 0;
  // userfaultfd (populate-on-demand): -1 unavailable, else the UFFDIO_API feature bits.
  int64_t uffd_features = -1;
  nlohmann::json to_json() const;
};

// kvm may be null (no /dev/kvm): then only host facts are filled in.
HostInfo probe_host(const vmm::KvmSystem* kvm);
// The facts read from files under `root` ("/" on the host; a fake tree in tests): cpu_model,
// microcode, SMT, NUMA layout, KVM module parameters. A file that is missing or unreadable
// leaves its fact unknown.
void read_host_files(HostInfo& h, const std::string& root);
// CPUs in a kernel cpulist ("0-3,8,10-11"); -1 if it is malformed.
int cpulist_count(const std::string& list);
// The process's full command line from ROOT/proc/self/cmdline, one string per argument (bytes
// that are not UTF-8 shown as U+FFFD).
std::vector<std::string> command_line(const std::string& root = "/");

// What the process and kernel use now, read at the run's phase boundaries (run.resources).
struct ResourceSample {
  uint64_t mem_available = 0;                // /proc/meminfo MemAvailable, bytes
  uint64_t cpu_user_ns = 0, cpu_sys_ns = 0;  // this process, exited threads included
  uint64_t threads = 0;                      // /proc/self/status Threads
  uint64_t peak_rss = 0;                     // this process's high-water RSS, bytes
};
ResourceSample sample_resources();

}  // namespace kvmscale::app
