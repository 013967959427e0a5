// RunConfig: everything that defines a run, validated, serialisable and re-runnable.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvmscale::app {

// Thrown for bad user input; the CLI prints it and exits 2.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Our own unit parsers, not CLI11's AsSizeValue/AsNumberWithUnit: those read the number as the
// result's type, so "1.5G" or "12.5ms" (fractions of a unit into a whole count) are refused, and
// CLI11's "m" cannot mean minutes for durations.
// "64M", "1G", "4096K", "2M", "65536" (bytes). Binary units. Throws ConfigError.
uint64_t parse_size(const std::string& text);
// A whole number in 0 .. 2^64-1, decimal or 0x-hexadecimal, nothing else (guest arguments).
uint64_t parse_u64(const std::string& text);
// Counts (--vms, --pcpus, --repeat, ...) are decimal: empty if `text` is one ("0" or no leading
// zero), else why not. CLI11 alone reads them with strtoull base 0 (0x10 = 16, 010 = 8).
std::string decimal_count_error(const std::string& text);
// "5s", "500ms", "250us", "2m", "1h", "10" (seconds). Throws ConfigError.
uint64_t parse_duration_ns(const std::string& text);
std::string format_size(uint64_t bytes);
std::string format_duration(uint64_t ns);

// The part of a run one VMM process runs when the run is sharded over processes (--procs,
// app/procs.hpp): VMs [first_vm, first_vm + vms) and, under credit/rr, its own pool of pCPUs
// [first_pcpu, first_pcpu + pcpus) with its own scheduler (Xen 4.7's cpupools). Set only in a
// VMM child; vms == 0 means the whole run.
struct Shard {
  uint32_t index = 0, count = 1;
  uint32_t first_vm = 0, vms = 0;
  uint32_t first_pcpu = 0, pcpus = 0;
  nlohmann::json to_json() const;
  static Shard from_json(const nlohmann::json& j);  // throws ConfigError
};

struct RunConfig {
  uint32_t vms = 4;
  uint32_t vcpus = 2;
  uint64_t mem = 16ull << 20;
  std::string guest = "boot-zero";
  std::string guest_file;                        // a custom image instead of a built-in guest
  std::vector<uint64_t> guest_args;              // --guest-arg, up to 8
  uint64_t duration_ns = 30ull * 1000000000ull;  // upper bound; a run also ends when all exit
  std::string sched = "host";                    // host | credit | rr
  uint32_t pcpus = 0;                            // pCPU threads for credit/rr; 0 = host online CPUs
  bool pcpu_bind = false;                        // bind pCPU i to the i-th allowed host CPU
  bool numa = false;              // bind each VM's memory to the nodes of its vCPUs' pCPUs
  std::string vcpu_pin = "none";  // none | 1:1 | LIST of pCPUs (vCPU k -> LIST[k % len])
  std::string balance = "xen";    // xen | affinity | counted | hybrid | none
  uint64_t tslice_ns = 30'000'000, ratelimit_ns = 1'000'000;
  uint64_t migration_delay_ns = 0;  // Xen's vcpu_migration_delay
  uint32_t weight = 256, cap = 0;
  std::vector<std::string> vm_opts;  // "vm3:weight=512,cap=50"
  // Populate-on-demand of each VM's free RAM (everything above the VMM's low 4 MiB).
  std::string pod_target;       // "" = fully populated; SIZE (e.g. 8M) or PERCENT (e.g. 50%)
  uint64_t pod_granule = 4096;  // 4K or 2M
  uint32_t sweep_stride = 16, sweep_limit = 1024;
  std::string pod_reclaim = "xen";   // xen (4.7's rule) | batched (reclaim only when empty)
  std::string call_lock = "global";  // global | percpu
  uint32_t fault_threads = 0;  // 0: one per pCPU (each acts for the pCPU whose fault it serves)
  static constexpr uint32_t kMaxFaultThreads = 1024;  // explicit or default (PodRuntime)
  std::string lock = "ticket";  // --lock: strategy, or CLASS=NAME overrides (locks::LockPolicy)
  bool lock_profile = true;
  std::string out = "results";
  bool json = false;
  bool echo_console = false;
  std::string procs = "auto";  // VMM processes: auto or a count (app/procs.hpp)
  Shard shard;                 // not a setting: a VMM child's part of the run

  // This process's VMs and pCPUs: the shard's, else the whole run's.
  uint32_t shard_vms() const { return shard.vms ? shard.vms : vms; }
  // Host mode has no pools: the host's CPUs.
  uint32_t shard_pcpus() const {
    return shard.vms && sched != "host" ? shard.pcpus : effective_pcpus();
  }

  // The guest VM `vm` runs: the file name with --guest-file, else guest[vm % list size].
  // The guest entries VMs take round-robin: built-in names and file:PATH images.
  std::vector<std::string> guest_list() const;
  std::string guest_for_vm(uint32_t vm) const;
  uint32_t weight_of(uint32_t vm) const;
  uint32_t cap_of(uint32_t vm) const;
  uint32_t effective_pcpus() const;
  // --procs as a count, or 0 for auto.
  uint32_t procs_given() const;
  // Settings given that this run will not use (e.g. --pcpus with --sched host): warnings for
  // stderr and the record's run.warnings.
  std::vector<std::string> ineffective_settings() const;
  // Granules of free RAM a PoD VM may populate (0 when PoD is off).
  uint64_t pod_target_granules() const;  // pcpus, or the host's online CPUs when 0
  // pCPUs the k-th vCPU of the run may use (empty: any).
  std::vector<uint32_t> pin_of(uint32_t global_vcpu) const;
  // Throws ConfigError naming the offending flag.
  void validate() const;
  nlohmann::json to_json() const;
  static RunConfig from_json(const nlohmann::json& j);  // validates
};

const std::vector<std::string>& builtin_guest_names();
// The lock classes of a run, for --lock CLASS=NAME: the cross-call lock, per-pCPU run-queue
// locks, per-VM p2m and PoD locks.
const std::vector<std::string>& lock_classes();
// "a,b,,c" -> {"a", "b", "", "c"}
std::vector<std::string> split_list(const std::string& text, char sep = ',');

}  // namespace kvmscale::app
