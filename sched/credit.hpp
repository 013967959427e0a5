// The credit1 vCPU scheduler (Xen's credit.c, as in 4.7) and its load-balancing strategies.
//
// Pure policy: no threads, no KVM, time passed in by the caller, so unit tests drive it with a
// virtual clock and fake vCPUs. PcpuExecutor (sched/pcpu_executor.cpp) runs real vCPUs with it.
//
// Locking follows Xen: one schedule lock per pCPU (class "runq") protects its run queue and the
// scheduling state of the vCPUs whose `processor` it is; a global accounting lock (class "runq",
// name "acct") protects the active lists. Credits and priorities are atomics updated by the
// accounting pass without the run-queue locks and re-sorted lazily on the next tick, as in Xen.
// The balance hints (runnable counts, affinity bitmaps, the idle mask) are read without locks:
// they are racy by design and only decide whether a peer is worth a try-lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "locks/registry.hpp"
#include "sched/cpuset.hpp"

namespace kvmscale::sched {

enum class Prio : int { Boost = 0, Under = -1, Over = -2, Idle = -64 };
// xen: try-lock every busy peer (4.7). affinity: the study's bitmap, skip peers none of whose
// queued vCPUs may run on the thief. counted: upstream 4.9, skip peers with < 2 runnable.
// hybrid (ours): skip peers with < 2 runnable, then peers whose *restricted* queued vCPUs exclude
// the thief and that queue no unrestricted vCPU; the bitmap only tracks restricted vCPUs, so
// unpinned queues cost O(1) per queue operation instead of O(pCPUs).
enum class Balance { Xen, Affinity, Counted, Hybrid, None };
const char* balance_name(Balance b);
bool parse_balance(const std::string& s, Balance& out);

struct CreditParams {
  uint64_t tick_ns = 10'000'000;      // credit burn / boost demotion tick
  uint64_t tslice_ns = 30'000'000;    // timeslice and accounting period
  uint64_t ratelimit_ns = 1'000'000;  // a vCPU that ran less than this is not preempted
  Balance balance = Balance::Xen;
  bool round_robin = false;  // --sched rr: same machinery, no credits or priorities
};

inline constexpr int kCreditsPerMs = 10;  // 1 credit = 100 us of pCPU time
inline constexpr int kCreditsPerTslice = 300;

enum class VState { Runnable, Running, Blocked, Done };

struct SchedVcpu;

struct SchedDomain {
  uint32_t index = 0;
  uint32_t weight = 256;
  uint32_t cap = 0;  // % of one pCPU, 0 = none
  std::vector<SchedVcpu*> vcpus;
  // Under the accounting lock.
  uint32_t active_vcpus = 0;
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
  void* owner = nullptr;  // the executor's handle (vmm::Vcpu); opaque here

  // Protected by the schedule lock of `processor`.
  std::atomic<uint32_t> processor{0};
  VState state = VState::Runnable;
  bool wake_pending = false;  // a wake that came while not blocked: the next block returns at once
  bool yielding = false;
  uint64_t block_gen = 0;         // bumps at every block; a timeout for an older block is stale
  int64_t block_result = 0;       // 0 woken, 1 timed out
  bool block_result_due = false;  // the executor must hand block_result to the guest
  uint64_t since_ns = 0;          // running: credit burned up to here; runnable: queued since
  uint64_t slice_start_ns = 0;
  uint64_t credit_residual_ns = 0;
  std::list<SchedVcpu*>::iterator pos;  // in its run queue while Runnable
  bool queued = false;
  VcpuSchedStats stats;

  // Accounting state: atomics, updated by the accounting pass without run-queue locks.
  std::atomic<int> credit{0};
  std::atomic<int> pri{int(Prio::Under)};
  std::atomic<bool> parked{false};
  // Written under the accounting lock; tick() peeks without it (activate() re-checks).
  std::atomic<bool> active{false};
};

struct BalanceStats {
  uint64_t attempts_idle = 0, attempts_over = 0;
  uint64_t peers_visited = 0, skipped_bitmap = 0, skipped_count = 0;
  uint64_t trylocks = 0, trylock_failures = 0, steals = 0;
  uint64_t balance_ns = 0;
};

struct PcpuSchedStats {
  uint64_t schedules = 0, ticks = 0, idle_picks = 0, context_switches = 0;
  BalanceStats balance;
};

// How the scheduler asks its executor to act on pCPUs.
class PcpuSignals {
 public:
  virtual ~PcpuSignals() = default;
  // pCPU p should reschedule soon: wake it if idle, kick it out of guest mode if running.
  virtual void tickle(uint32_t p) = 0;
};

class CreditScheduler {
 public:
  CreditScheduler(uint32_t npcpus, CreditParams params, locks::LockRegistry& locks,
                  PcpuSignals& signals, std::vector<int> pcpu_node = {});
  ~CreditScheduler();

  // Set-up, before any scheduling.
  SchedDomain& add_domain(uint32_t weight, uint32_t cap);
  SchedVcpu& add_vcpu(SchedDomain& d, CpuSet affinity, void* owner);
  // Queues every vCPU on a pCPU it may run on and starts the clocks. `placement` picks the pCPU
  // (it must be in the vCPU's affinity); by default vCPUs are spread round-robin.
  void start(uint64_t now, std::function<uint32_t(const SchedVcpu&)> placement = {});

  uint32_t npcpus() const { return uint32_t(pcpus_.size()); }
  const CreditParams& params() const { return params_; }

  struct Decision {
    SchedVcpu* next = nullptr;  // null: idle
    uint64_t until_ns = 0;      // reschedule no later than this (slice end or ratelimit)
  };
  // What pCPU p runs next. Its current vCPU, if still Running, competes (credit burned first).
  Decision schedule(uint32_t p, uint64_t now);
  // Tick on pCPU p: burn the current vCPU's credits, demote BOOST, activate; re-sort the queue
  // after an accounting pass; on the master pCPU run accounting when due. Returns true when the
  // current vCPU should be preempted (a better one waits, or it got parked).
  bool tick(uint32_t p, uint64_t now);
  // The current vCPU of p wants to block (hypercall). False: a wake was pending, keep running.
  bool block(uint32_t p, SchedVcpu& v, uint64_t now);
  void yield(uint32_t p, SchedVcpu& v);
  // v stops for good (exited, or its VM crashed / the run ends). Any pCPU may call it.
  void finish(SchedVcpu& v, uint64_t now);
  // Wake v (from any thread). timed_out: a block timeout for block generation `gen`.
  void wake(SchedVcpu& v, uint64_t now, bool timed_out = false, uint64_t gen = 0);
  // The vCPU running on p now (null if idle). Only p's own thread may call it.
  SchedVcpu* current(uint32_t p) const { return pcpus_[p]->curr; }
  // True when p is running v and nothing was decided since (fast path for the executor).
  bool need_resched(uint32_t p) const {
    return pcpus_[p]->need_resched.load(std::memory_order_acquire);
  }

  // Accounting pass (also run from tick on the master pCPU).
  void account(uint64_t now);

  nlohmann::json report() const;  // after the run
  const PcpuSchedStats& pcpu_stats(uint32_t p) const { return pcpus_[p]->stats; }
  const std::vector<std::unique_ptr<SchedVcpu>>& vcpus() const { return vcpus_; }
  std::vector<SchedVcpu*> queued(uint32_t p) const;  // for tests

 private:
  struct Pcpu {
    uint32_t index = 0;
    int node = 0;
    std::unique_ptr<locks::AnyLock> lock;
    std::list<SchedVcpu*> runq;
    SchedVcpu* curr = nullptr;
    std::atomic<bool> need_resched{false};
    // Balance hints, read without the lock.
    std::atomic<uint32_t> nr_runnable{0};  // queued + running
    std::vector<uint32_t> affinity_count;  // [q]: queued vCPUs that may run on q (under lock)
    std::vector<std::atomic<uint64_t>> affinity_bits;  // bit q: affinity_count[q] > 0
    std::atomic<uint32_t> unrestricted{0};             // hybrid: queued vCPUs that may run anywhere
    uint32_t balance_cursor = 0;
    uint64_t last_acct_gen = 0;
    PcpuSchedStats stats;
  };

  void burn(SchedVcpu& v, uint64_t now);
  void runq_insert(Pcpu& pc, SchedVcpu& v, uint64_t now);
  void runq_remove(Pcpu& pc, SchedVcpu& v);
  void runq_sort(Pcpu& pc);
  void track_affinity(Pcpu& pc, const SchedVcpu& v, bool queued);
  SchedVcpu* pick_local(Pcpu& pc, int* best_pri);
  SchedVcpu* load_balance(Pcpu& pc, int local_pri, uint64_t now);
  SchedVcpu* steal_from(Pcpu& thief, Pcpu& peer, int min_pri);
  bool peer_worth_trying(Pcpu& thief, const Pcpu& peer);
  void activate(SchedVcpu& v);
  void set_idle(uint32_t p, bool idle);
  bool is_idle(uint32_t p) const;
  void tickle_for(SchedVcpu& v, uint32_t p);
  void lock_vcpu(SchedVcpu& v, locks::AnyLock::Node& n, Pcpu*& pc);

  CreditParams params_;
  PcpuSignals& signals_;
  std::vector<std::unique_ptr<Pcpu>> pcpus_;
  std::vector<std::unique_ptr<SchedDomain>> domains_;
  std::vector<std::unique_ptr<SchedVcpu>> vcpus_;
  std::unique_ptr<locks::AnyLock> acct_lock_;
  std::vector<SchedVcpu*> active_;  // under acct_lock_
  std::vector<std::atomic<uint64_t>> idle_mask_;
  std::atomic<uint64_t> acct_gen_{0};
  uint64_t next_acct_ns_ = 0;  // master pCPU only
  uint64_t accounting_passes_ = 0;
};

}  // namespace kvmscale::sched
