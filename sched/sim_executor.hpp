// The simulated pCPU executor (--accel sim, issue 21, docs/sim.md): the real CreditScheduler,
// with every balancer and the run's lock policy, over N simulated pCPUs in virtual time. Each pCPU
// is a fiber of a sim::Engine running the same PcpuSequence as the KVM executor's pCPU threads;
// guests are small models (GuestModel) whose exits cost what SimCosts says; every lock the
// scheduler makes is a sim::SimLock, so run-queue try-locks fail while a peer holds the lock in
// virtual time. One host thread, no wall clock: the same seed gives the same report.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "locks/registry.hpp"
#include "sched/cpuset.hpp"
#include "sched/credit.hpp"
#include "sim/engine.hpp"
#include "sim/lock.hpp"

namespace kvmscale::sched {

// What a simulated pCPU's steps cost in virtual time. Defaults are placeholders of the right order
// for a VMX host, to be calibrated (issue 21, next step); every one is reported with the run.
struct SimCosts {
  uint64_t exit_ns = 1'500;      // one guest exit and re-entry (VM exit, KVM_RUN return, entry)
  uint64_t schedule_ns = 1'000;  // CPU of one schedule() beyond its lock operations
  uint64_t timers_ns = 500;      // CPU of a due tick and block timers beyond their locks
  uint64_t account_ns = 2'000;   // CPU of one accounting pass beyond its locks
  uint64_t kick_ns = 2'000;      // a tickle's IPI: until the target leaves guest mode or idle
  uint64_t timer_jitter_ns = 0;  // each armed timer fires up to this much late (seeded, uniform)
  sim::LockCosts locks;          // c (line_ns) and the hand-off costs (sim/lock.hpp)
  nlohmann::json to_json() const;
};

// Guest models that stand for the built-in guests.
//   spin      runs until its pCPU's timer or a kick (guests/spin.c); each exit costs exit_ns
//   idle      blocks at once, for block_ns (0: until woken; guests/idle.c)
//   pingpong  even vCPUs wake their partner (index ^ 1 in its VM) and block, odd ones block and,
//             woken, wake their partner; each exit after uniform [0, work_ns] of guest work
//             (guests/pingpong.c)
enum class GuestModel { Spin, Idle, Pingpong };

struct SimVm {
  GuestModel model = GuestModel::Spin;
  uint32_t vcpus = 1;
  uint32_t weight = 256, cap = 0;
  uint64_t block_ns = 0;      // idle: block timeout
  uint64_t work_ns = 50'000;  // pingpong: most guest work between two hypercalls
};

struct SimOptions {
  uint32_t npcpus = 2;
  uint64_t seed = 1;
  CreditParams params;
  std::vector<SimVm> vms;
  // Hard affinity of the k-th vCPU of the run (VMs in order); default: every pCPU.
  std::function<CpuSet(uint32_t global_vcpu)> affinity_of;
  SimCosts costs;
  locks::LockPolicy lock_policy;
};

class SimExecutor {
 public:
  explicit SimExecutor(const SimOptions& opt);
  ~SimExecutor();
  SimExecutor(const SimExecutor&) = delete;
  SimExecutor& operator=(const SimExecutor&) = delete;

  // Runs every vCPU for `duration_ns` of virtual time, then stops the pCPUs. Once.
  void run(uint64_t duration_ns);

  // The scheduler's report with per-pCPU busy/sched times, the locks' profiles and a `sim`
  // section (seed, events, virtual time, double runs, costs). Deterministic for a seed.
  nlohmann::json report() const;
  const CreditScheduler& scheduler() const;
  const sim::Engine& engine() const;
  uint64_t double_runs() const;  // a vCPU entered on a pCPU while running on another

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvmscale::sched
