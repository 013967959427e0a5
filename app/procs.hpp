// Sharding a run over VMM processes (--procs K): each child runs a contiguous range of the run's
// VMs with its own mm, fds and threads and, under credit/rr, its own pool of pCPUs with its own
// scheduler, as Xen 4.7's cpupools give each pool its own scheduler instance
// (xen/common/cpupool.c: cpupool_create() -> scheduler_alloc(), cpupool_assign_cpu_locked(),
// cpupool_move_domain()). The parent starts them before it opens /dev/kvm or starts a thread,
// and merges their records into one (docs/run-record.md, "procs").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "app/config.hpp"

namespace kvmscale::app {

// The automatic rule: one process per this many VMs (or more processes when RLIMIT_NOFILE's
// hard limit cannot hold that many VMs' fds in one process).
inline constexpr uint32_t kVmsPerProcess = 5000;

struct ProcsPlan {
  std::vector<Shard> shards;  // one per process, VMs and pCPUs in order
  std::string rule;           // how the count was chosen, for the record and the reader
};

// The processes `cfg` runs in, for a host whose RLIMIT_NOFILE hard limit is `nofile_hard`.
// Throws ConfigError naming the flag a sharded run cannot honour (--vcpu-pin into another
// pool), RunError for a plan whose processes cannot hold their fds.
ProcsPlan plan_procs(const RunConfig& cfg, uint64_t nofile_hard);

// How one VMM child ended, and its record (null when it wrote none).
struct ShardResult {
  Shard shard;
  pid_t pid = 0;
  int wait_status = 0;                // as waitpid gives it
  uint64_t start_ns = 0, end_ns = 0;  // CLOCK_MONOTONIC: fork, reap
  nlohmann::json record;
};

// One record for the whole run from the children's records, read as an unsharded run's: VMs in
// run-wide order, summary over every VM, pCPUs numbered run-wide, counters summed, and a "procs"
// entry per process. `interrupted`: the parent was stopped by SIGINT/SIGTERM.
nlohmann::json merge_shard_records(const RunConfig& cfg, const ProcsPlan& plan,
                                   const std::vector<ShardResult>& results,
                                   uint64_t started_unix_ns, uint64_t wall_ns, bool interrupted);

// Runs the plan's processes (this executable's hidden `vmm-shard` command) and returns the
// merged record. A child that fails fails the run (RunError naming it, with its stderr's tail)
// after the others are stopped and reaped. SIGINT/SIGTERM (blocked, see block_stop_signals)
// end every child; the record is then marked interrupted.
nlohmann::json run_sharded(const RunConfig& cfg, const ProcsPlan& plan);

// What a run checks of `cfg` before it starts and that needs neither KVM nor the host's limits:
// its guest files (read_guest_file) and its processes' plan (plan_procs: pins within the pools).
// Throws ConfigError. `images_checked`: file:PATH guests already read, skipped and added to (a
// matrix reads each image once for all its cells).
void check_run_inputs(const RunConfig& cfg, std::set<std::string>* images_checked = nullptr);

// A run as `kvmscale run` and `kvmscale matrix` do it: planned (--procs), then in this process
// or sharded over VMM children; the record has run.procs either way.
nlohmann::json run_planned(const RunConfig& cfg);

// The hidden command's name and its body: reads {"config", "shard"} from stdin, runs that shard
// and writes its record to `record_path`. Returns the exit code.
inline constexpr const char* kShardCommand = "vmm-shard";
int shard_child_main(const std::string& record_path);

}  // namespace kvmscale::app
