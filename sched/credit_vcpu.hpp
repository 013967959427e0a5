// The credit scheduler's view of domains and vCPUs (after Xen 4.7's csched_dom and csched_vcpu),
// and the statistics it keeps; the scheduler itself is in sched/credit.hpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <vector>

#include "sched/cpuset.hpp"

namespace kvmscale::sched {

enum class Prio : int { Boost = 0, Under = -1, Over = -2, Idle = -64 };
// The priorities a queued vCPU can have, as levels 0 (BOOST), 1 (UNDER), 2 (OVER).
inline constexpr uint32_t kPrioLevels = 3;
inline uint32_t prio_level(int pri) { return uint32_t(int(Prio::Boost) - pri); }

inline constexpr int kCreditsPerMs = 10;  // 1 credit = 100 us of pCPU time

// A vCPU's scheduling state (under the schedule lock of its `processor`):
//
//   Runnable --schedule()--> Running --block()--> Blocked --wake()--> Runnable
//      ^                      |   ^                  |
//      +--schedule() (slice,--+   +--wake() while it-+   (still current on its pCPU: not queued)
//         yield, preempt)            is still current
//   any --finish()--> Done
//
// A Runnable vCPU is queued on its processor's run queue unless it is parked (over its cap; not
// runnable, as Xen's vcpu_pause) or still current there. A queued vCPU is never current anywhere:
// that is what keeps one vCPU off two pCPUs.
enum class VState { Runnable, Running, Blocked, Done };

struct SchedVcpu;

struct SchedDomain {
  uint32_t index = 0;
  uint32_t weight = 256;
  uint32_t cap = 0;  // % of one pCPU, 0 = none
  std::vector<SchedVcpu*> vcpus;
  // Under the accounting lock (Xen's sdom->active_vcpu, active_sdom_elem).
  std::list<SchedVcpu*> active;
  bool in_active_doms = false;
  std::list<SchedDomain*>::iterator active_pos;
};

struct VcpuSchedStats {
  uint64_t run_ns = 0, wait_ns = 0;  // running / runnable-but-waiting
  uint64_t schedules = 0, migrations = 0, boosts = 0, wakes = 0, parks = 0, preemptions = 0;
  CpuSet pcpus_used;
};

struct SchedVcpu {
  uint32_t id = 0;  // global index over the run
  SchedDomain* dom = nullptr;
  CpuSet affinity;        // hard affinity
  CpuSet soft_affinity;   // preferred pCPUs (all: none in particular)
  bool has_soft = false;  // soft affinity matters (set at start(); affinities are fixed then)
  void* owner = nullptr;  // the executor's handle; opaque here

  // Protected by the schedule lock of `processor` (changed only with that lock held).
  std::atomic<uint32_t> processor{0};
  VState state = VState::Runnable;
  bool queued = false;
  std::list<SchedVcpu*>::iterator pos;  // in its run queue while queued
  uint32_t level = 0;  // prio_level() when queued or last re-sorted (runq_insert's walk reads it)
  bool yield_flag = false;    // CSCHED_FLAG_VCPU_YIELD
  bool migrating = false;     // _VPF_migrating: move to the pCPU _csched_cpu_pick names at the
                              // next schedule() of its processor (vcpu_migrate)
  bool wake_pending = false;  // a wake that came while not blocked: the next block returns at once
  uint64_t block_gen = 0;     // bumps at every block; a timeout for an older block is stale
  int64_t block_result = 0;   // 0 woken, 1 timed out
  bool block_result_due = false;  // the executor must hand block_result to the guest
  uint64_t since_ns = 0;          // running: credit burned up to here; runnable: queued since
  uint64_t slice_start_ns = 0;
  uint64_t last_run_ns = 0;  // when it was last switched out (Xen's last_run_time)
  uint64_t credit_residual_ns = 0;
  VcpuSchedStats stats;

  // Accounting state: atomics, written by accounting without run-queue locks.
  std::atomic<int> credit{0};
  std::atomic<int> pri{int(Prio::Under)};
  std::atomic<bool> parked{false};  // CSCHED_FLAG_VCPU_PARKED; changed under the runq lock
  std::atomic<bool> done{false};    // finish() was called: never (re)activated
  // Written under the accounting lock; tick() peeks without it (activation re-checks).
  std::atomic<bool> active{false};
  std::list<SchedVcpu*>::iterator active_pos;  // in dom->active, under the accounting lock
};

struct BalanceStats {
  uint64_t attempts_idle = 0, attempts_over = 0;
  uint64_t peers_visited = 0, skipped_bitmap = 0, skipped_count = 0;
  uint64_t trylocks = 0, trylock_failures = 0, steals = 0;
  uint64_t skipped_hot = 0;  // queued vCPUs left alone as cache-hot (Xen's vcpu_hot)
  uint64_t balance_ns = 0;
};

struct PcpuSchedStats {
  uint64_t schedules = 0, ticks = 0, idle_picks = 0, context_switches = 0;
  uint64_t tickles = 0, tickle_preempts = 0;  // sent from here; of which preempted a vCPU
  uint64_t activations_deferred = 0;  // ticks that found the accounting lock busy (pass running)
  // Running vCPUs asked to move to an idler: by the tick (csched_vcpu_acct's migrate_running) and
  // by a wake that preempts them (__runq_tickle's migrate_kicked_away).
  uint64_t migrate_running = 0, migrate_kicked_away = 0;
  BalanceStats balance;
};

}  // namespace kvmscale::sched
