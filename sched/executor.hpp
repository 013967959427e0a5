// Who runs the vCPUs. An Executor owns host threads and drives Vm::run_once(); the Testbed
// only starts, watches and stops it, so schedulers plug in behind this interface.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "locks/registry.hpp"
#include "mm/soft_tlb.hpp"
#include "sched/cpuset.hpp"
#include "sched/credit.hpp"
#include "sched/cross_call.hpp"
#include "sched/p2m.hpp"
#include "vmm/vm.hpp"

namespace kvmscale::sched {

class Executor {
 public:
  virtual ~Executor() = default;
  virtual const char* name() const = 0;
  // Starts running every vCPU of every VM given at construction.
  virtual void start() = 0;
  // True once every vCPU has exited or its VM has stopped.
  virtual bool all_done() const = 0;
  // Kicks every vCPU out of guest mode, wakes blocked ones and joins all threads. Idempotent.
  virtual void stop() = 0;
  // Scheduler counters for the run record (after stop()).
  virtual nlohmann::json report() const { return nlohmann::json::object(); }

  // Cross-call targets ("contexts"): the pCPU threads (credit/rr) or the vCPU threads (host).
  virtual uint32_t contexts() const = 0;
  virtual void kick_context(uint32_t c) = 0;
  // `vm`'s p2m view (sched/p2m.hpp): its dirty mask and invalidate marks, which the contexts
  // keep up to date as they enter its vCPUs, its epochs and its flush.
  virtual P2m& p2m(const vmm::Vm& vm) const = 0;
  // The context running on thread `tid`, or -1.
  virtual int context_of_thread(uint32_t tid) const = 0;
  // Contexts serve `cc` at safe points and count as stalled while blocked, idle or gone.
  // Call before start().
  virtual void set_cross_call(CrossCall* cc) = 0;
  // Stops every vCPU of `vm` (it was crashed from outside, e.g. out of PoD memory).
  virtual void stop_vm(vmm::Vm& vm) = 0;
  // Context c's software TLB. Only c's thread may use it: flushes run there (cross-calls), and
  // reports read it after stop().
  virtual mm::SoftTlb& tlb(uint32_t c) = 0;
};

struct PcpuOptions {
  uint32_t npcpus = 1;
  bool bind = false;  // pin pCPU i to the (first_pcpu + i)-th allowed host CPU (round-robin)
  // Run-wide index of pCPU 0: a pool's first pCPU under --procs, so that the pools of a sharded
  // run bind to distinct host CPUs (bound_host_cpus over the whole run).
  uint32_t first_pcpu = 0;
  CreditParams params;
  std::function<uint32_t(uint32_t vm)> weight_of = [](uint32_t) { return 256u; };
  std::function<uint32_t(uint32_t vm)> cap_of = [](uint32_t) { return 0u; };
  // Hard affinity of the k-th vCPU of the run (VMs in order, vCPUs in order).
  std::function<CpuSet(uint32_t global_vcpu)> affinity_of;
};

// Host CPU of each of `npcpus` bound pCPUs: round-robin over this process's allowed CPUs.
std::vector<int> bound_host_cpus(uint32_t npcpus);
// NUMA node of a host CPU (0 where NUMA is unavailable).
int node_of_host_cpu(int cpu);

// `--sched credit|rr`: pCPU threads multiplexing vCPUs with CreditScheduler.
std::unique_ptr<Executor> make_pcpu_executor(std::vector<vmm::Vm*> vms, const PcpuOptions& opt,
                                             locks::LockRegistry& locks);

// `--sched host`: one host thread per vCPU, scheduled by Linux (what an ordinary KVM VMM does).
std::unique_ptr<Executor> make_host_executor(std::vector<vmm::Vm*> vms);

}  // namespace kvmscale::sched
