// Populate-on-demand for every VM of a run: one userfaultfd, the FaultService threads (one per
// pCPU by default, each acting as the flush initiator for the pCPU whose fault it serves), each
// VM's PodVm, and the cross-call its flushes go through. Each VM's PodVm is attached to the VM's
// p2m view (sched::P2m, owned by the executor), which owns the epochs, the dirty mask, the
// invalidate marks and the flush; this runtime only wires them and serves faults. Built after the
// executor, before it starts; stop() before the executor goes. `skip_flushes` and `read_faults`
// are test hooks (app::TestHooks).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <vector>

#include "app/config.hpp"
#include "locks/registry.hpp"
#include "mm/fault_service.hpp"
#include "mm/pod_vm.hpp"
#include "mm/userfaultfd.hpp"
#include "sched/cross_call.hpp"
#include "sched/executor.hpp"
#include "vmm/vm.hpp"

namespace kvmscale::app {

class PodRuntime {
 public:
  PodRuntime(const RunConfig& cfg, const std::vector<vmm::Vm*>& vms, sched::Executor& ex,
             locks::LockRegistry& locks, bool skip_flushes, bool read_faults = true);
  ~PodRuntime();
  PodRuntime(const PodRuntime&) = delete;
  PodRuntime& operator=(const PodRuntime&) = delete;

  // Liveness, from the run loop: false once a fault has waited unread for a second while no
  // fault thread was busy (reads are served within microseconds otherwise).
  bool faults_served(uint64_t now) { return !faults_ || faults_->serving(now, kFaultPatienceNs); }
  static constexpr uint64_t kFaultPatienceNs = 1000000000;
  // Takes the cross-call and the PodVms back from the executor and the VMs' p2m views (they
  // outlive this runtime; nothing may run on them by then).
  void detach();
  // Stops serving faults (joins the service threads); reports are exact only after this.
  void stop();

  // Fault threads a run starts: --fault-threads, or by default one per pCPU of this process
  // (as many flushes in flight as pCPUs can fault at once), at most kMaxDefaultFaultThreads.
  static constexpr uint32_t kMaxDefaultFaultThreads = RunConfig::kMaxFaultThreads;
  static uint32_t fault_threads_for(const RunConfig& cfg) {
    return cfg.fault_threads ? cfg.fault_threads
                             : std::min(kMaxDefaultFaultThreads, cfg.shard_pcpus());
  }

  nlohmann::json vm_report(const vmm::Vm& vm) const;
  nlohmann::json report() const;

 private:
  // One VM's PoD.
  struct VmPod {
    vmm::Vm* vm = nullptr;
    std::unique_ptr<mm::PodVm> pod;
    uintptr_t ram = 0;  // host address of the RAM its PoD covers
    // Time its vCPUs waited on faults while a service thread resolved them (from reading the
    // fault to waking the vCPU; the kernel's delivery before that is not visible here).
    std::atomic<uint64_t> stall_ns{0}, stall_max_ns{0};
  };
  // The VM whose PoD RAM holds `address`, or null.
  VmPod* pod_at(uint64_t address) const;
  void on_fault(const mm::FaultEvent& ev);
  // Xen crashes the domain ("out of PoD memory"): only this VM stops.
  void out_of_memory(vmm::Vm& vm);

  sched::Executor& ex_;
  mm::Userfaultfd uffd_;
  sched::CrossCall cc_;
  std::vector<std::unique_ptr<VmPod>> pods_;
  std::vector<VmPod*> by_address_;  // by `ram`, ascending
  std::unordered_map<const vmm::Vm*, VmPod*> pod_of_vm_;
  std::unique_ptr<mm::FaultService> faults_;
  uint32_t fault_threads_ = 0;
  std::atomic<uint64_t> oom_{0};
  uint64_t fault_events_ = 0;
};

}  // namespace kvmscale::app
