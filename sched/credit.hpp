// The credit1 vCPU scheduler, after Xen 4.7's xen/common/sched_credit.c, and its load-balancing
// strategies. docs/scheduler.md maps each Xen function to the code here and to its test.
//
// Pure policy: no threads, no KVM, time passed in by the caller, so unit tests drive it with a
// virtual clock and fake vCPUs. PcpuExecutor (sched/pcpu_executor.cpp) runs real vCPUs with it.
//
// Locking, as Xen's: one schedule lock per pCPU (class "runq") protects its run queue, its `curr`
// and the scheduling state of the vCPUs whose `processor` it is; the accounting lock (class
// "sched", Xen's prv->lock) protects the active lists and the accounting totals. Order: the
// accounting lock comes first ("private lock always comes first"); a run-queue lock is taken
// inside it only to park or unpark a vCPU. Two run-queue locks are never held together except
// by try-lock in the balancer. Credits and priorities are atomics written by accounting without
// the run-queue locks and re-sorted lazily by each pCPU's next tick, as in Xen. Balance hints
// (runnable counts, affinity bitmaps, the idle mask) are read without locks: racy by design,
// they only decide whether a peer is worth a try-lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "locks/registry.hpp"
#include "sched/atomic_cpuset.hpp"
#include "sched/cpuset.hpp"
#include "sched/credit_vcpu.hpp"

namespace kvmscale::sched {

// xen: 4.7, try-lock every busy peer, from the first. affinity: the study's bitmap on top of 4.7,
// skip peers none of whose queued vCPUs may run on the thief. counted: upstream 4.9, skip peers
// with < 2 runnable and start each node's visit after the last peer stolen from.
// hybrid (ours): skip peers with < 2 runnable, then peers whose *restricted* queued vCPUs exclude
// the thief and that queue no unrestricted vCPU; the bitmap only tracks restricted vCPUs.
enum class Balance { Xen, Affinity, Counted, Hybrid, None };
const char* balance_name(Balance b);
bool parse_balance(const std::string& s, Balance& out);

// __csched_set_tslice: three ticks per timeslice (CSCHED_TICKS_PER_TSLICE), one when the slice
// is under 3 ms.
inline uint64_t tick_period_ns(uint64_t tslice_ns) {
  return tslice_ns < 3'000'000 ? tslice_ns : tslice_ns / 3;
}

struct CreditParams {
  uint64_t tslice_ns = 30'000'000;  // timeslice and accounting period
  uint64_t tick_ns = 0;  // credit burn, BOOST end, activation (csched_tick); 0: tick_period_ns()
  uint64_t ratelimit_ns = 1'000'000;  // a vCPU that ran less than this is not descheduled
  // vcpu_migration_delay: a vCPU switched out less than this ago is cache-hot and not stolen.
  uint64_t migration_delay_ns = 0;
  Balance balance = Balance::Xen;
  bool round_robin = false;  // --sched rr: same machinery, no credits or priorities
  // true: the master pCPU's tick runs account() when due. false: tick() only says it is due and
  // the caller runs it elsewhere (PcpuExecutor: on its accounting thread).
  bool account_on_tick = true;
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
  // What pCPU p runs next (csched_schedule). Its current vCPU, if still runnable, competes.
  Decision schedule(uint32_t p, uint64_t now);
  // Tick on pCPU p (csched_tick): burn the current vCPU's credits, end its BOOST, activate it,
  // or, if it was already active and _csched_cpu_pick names an idler for it, mark it migrating
  // and ask p to reschedule (csched_vcpu_acct); re-sort the queue after an accounting pass; on
  // the master pCPU 0 run accounting when due. True: a pass is due and
  // params().account_on_tick is false, so the caller must run account() itself.
  bool tick(uint32_t p, uint64_t now);
  // The current vCPU of p wants to block (hypercall). False: a wake was pending, keep running.
  bool block(uint32_t p, SchedVcpu& v, uint64_t now);
  void yield(uint32_t p, SchedVcpu& v);
  // v stops for good (exited, or its VM crashed / the run ends). Any thread may call it.
  void finish(SchedVcpu& v, uint64_t now);
  // Wake v (csched_vcpu_wake), from any thread. timed_out: a block timeout for generation `gen`.
  void wake(SchedVcpu& v, uint64_t now, bool timed_out = false, uint64_t gen = 0);
  // True when p must call schedule() (a tickle, block, yield, park or finish asked for it).
  bool need_resched(uint32_t p) const;

  // Accounting pass (csched_acct; run from tick on the master pCPU, or by the caller's timer).
  // O(active vCPUs) under the accounting lock, as Xen's.
  void account(uint64_t now);

  nlohmann::json report() const;  // after the run
  const PcpuSchedStats& pcpu_stats(uint32_t p) const;
  const std::vector<std::unique_ptr<SchedVcpu>>& vcpus() const { return vcpus_; }
  std::vector<SchedVcpu*> queued(uint32_t p) const;  // for tests
  // Tests only: schedule() calls it with the vCPU leaving for another pCPU after it released
  // the old pCPU's lock and before migrate() takes the target's, to inject events there.
  std::function<void(SchedVcpu&)> between_locks_hook;

 private:
  struct Pcpu;
  class RunqGuard;

  int credits_per_tslice() const;
  void burn(SchedVcpu& v, uint64_t now);
  void runq_insert(Pcpu& pc, SchedVcpu& v, uint64_t now);
  void runq_remove(Pcpu& pc, SchedVcpu& v);
  void runq_sort(Pcpu& pc);
  void update_runnable(Pcpu& pc);
  void track_affinity(Pcpu& pc, const SchedVcpu& v, bool queued);
  void runq_tickle(Pcpu& pc, SchedVcpu& v);
  uint32_t cpu_pick(Pcpu& pc, const SchedVcpu& v);
  Decision schedule_locked(Pcpu& pc, uint64_t now, SchedVcpu*& moving);
  void migrate(SchedVcpu& v, uint64_t now);
  void tickle(Pcpu& from, uint32_t q, bool preempt);
  SchedVcpu* load_balance(Pcpu& pc, int local_pri, uint64_t now);
  SchedVcpu* runq_steal(Pcpu& thief, Pcpu& peer, int min_pri, int step, uint64_t now);
  bool peer_worth_trying(Pcpu& thief, const Pcpu& peer);
  bool has_soft_affinity(const SchedVcpu& v) const;
  bool acct_start(SchedVcpu& v, bool may_wait);  // false: the lock was busy, not activated
  void acct_start_locked(SchedVcpu& v);
  void acct_stop_locked(SchedVcpu& v);
  void park(SchedVcpu& v);
  void unpark(SchedVcpu& v, uint64_t now);
  void set_idle(uint32_t p, bool idle);
  void read_idlers(CpuSet& out) const;  // the idle mask, into out's storage

  CreditParams params_;
  PcpuSignals& signals_;
  std::vector<std::unique_ptr<Pcpu>> pcpus_;
  std::vector<std::unique_ptr<SchedDomain>> domains_;
  std::vector<std::unique_ptr<SchedVcpu>> vcpus_;
  std::vector<int> nodes_;                           // distinct NUMA nodes of the pCPUs, sorted
  std::vector<std::atomic<uint32_t>> balance_bias_;  // per node: 4.9's start (counted only)
  AtomicCpuSet idle_mask_;                           // Xen's prv->idlers
  std::atomic<uint64_t> acct_gen_{0};                // Xen's prv->runq_sort
  uint64_t next_acct_ns_ = 0;                        // master pCPU only

  std::unique_ptr<locks::AnyLock> acct_lock_;
  // Under acct_lock_ (Xen's prv->active_sdom, weight, credit_balance).
  std::list<SchedDomain*> active_doms_;
  int64_t active_weight_ = 0;
  int64_t credit_balance_ = 0;
  uint64_t accounting_passes_ = 0;
};

}  // namespace kvmscale::sched
