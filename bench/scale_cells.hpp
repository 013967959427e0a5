// bench_scale's measurements. Each runs in a child process of its own (a fresh mm, its own
// rusage): kvmscale as a program, the bare loop and the notifier section forked from the bench.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/mm_call_cost.hpp"

namespace kvmscale::bench {

struct ScaleOptions {
  std::string kvmscale;                    // path of the kvmscale binary
  std::vector<std::string> kvmscale_args;  // appended to both kvmscale runs (e.g. --procs 4)
  std::string records_dir;  // kvmscale writes each record here too (--out); removed after reading
  std::string mem = "8M";   // --mem of every kvmscale guest
  std::string duration = "auto";     // --duration of the kvmscale runs; auto: kvmscale_duration()
  uint32_t pcpus = 1;                // --pcpus of the credit runs
  bool bare_unmap_teardown = false;  // bare teardown: per-VM munmap+close, not exit
  uint64_t timeout_ns = 1800ull * 1000000000ull;  // per child process
  int mm_call_reps = 200;                         // timed calls per kind and VM count (notifier)
};

// The --duration a kvmscale run of N VMs gets: o.duration, or with "auto" 1 s + 3 ms per VM,
// time for every VM to boot on a loaded 2-CPU host (launch counts only if all booted).
std::string kvmscale_duration(const ScaleOptions& o, uint32_t n);

// N VMs launched and torn down in one child process, in one mode (host, credit, bare).
struct Cell {
  std::string mode;
  uint32_t n = 0;
  std::string error;  // empty: measured
  uint64_t launch_ns = 0, teardown_ns = 0, cpu_user_ns = 0, cpu_sys_ns = 0, max_rss_bytes = 0,
           child_wall_ns = 0;
  std::string launch_source, teardown_source;  // where each figure came from
  nlohmann::json details = nlohmann::json::object();

  bool ok() const { return error.empty(); }
  uint64_t cpu_ns() const { return cpu_user_ns + cpu_sys_ns; }
  double per_vm(uint64_t total) const { return n ? double(total) / double(n) : 0; }
  nlohmann::json to_json() const;
};

// Repetitions of one N and mode as one cell: the median of each figure; the first failure if
// any failed.
Cell median_cell(const std::vector<Cell>& runs);

// `kvmscale run --vms N --vcpus 1 --guest idle --duration D --mem M --json --sched host` or
// `... --sched credit --pcpus P`; the figures come from its record where it has them
// (run.phases, run.resources) and from the child's clock and rusage otherwise.
Cell measure_kvmscale(const std::string& sched, uint32_t n, const ScaleOptions& o);

// The bare create+run loop (bench/bare_kvm.hpp) at N, all VMs alive until the last is up.
Cell measure_bare(uint32_t n, const ScaleOptions& o);

// One process holding M bare VMs for each M of `vm_counts` (grown in place, ascending), timing
// the mapping changes of bench/mm_call_cost.hpp at each. Throws with the child's message.
struct NotifierRow {
  uint32_t vms;
  MmCallCost cost;
};
std::vector<NotifierRow> measure_notifier(const std::vector<uint32_t>& vm_counts,
                                          const ScaleOptions& o);

}  // namespace kvmscale::bench
