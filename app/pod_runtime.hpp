// Populate-on-demand for every VM of a run: one userfaultfd, the FaultService threads (one per
// pCPU by default, each acting as the flush initiator for the pCPU whose fault it serves), each
// VM's PodVm, and the cross-calls its flushes go through (ept_sync_domain: the VM's P2mSync marks
// every context and targets its dirty mask). Built after the executor, before it starts; stop()
// before the executor goes. `skip_flushes` and `read_faults` are test hooks (app::TestHooks).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "app/config.hpp"
#include "guests/include/kvmscale_abi.h"
#include "locks/registry.hpp"
#include "mm/fault_service.hpp"
#include "mm/pod_vm.hpp"
#include "mm/userfaultfd.hpp"
#include "sched/executor.hpp"
#include "vmm/clock.hpp"
#include "vmm/vm.hpp"

namespace kvmscale::app {

class PodRuntime {
 public:
  PodRuntime(const RunConfig& cfg, const std::vector<vmm::Vm*>& vms, sched::Executor& ex,
             locks::LockRegistry& locks, bool skip_flushes, bool read_faults = true)
      : ex_(ex),
        cc_(ex.contexts(),
            cfg.call_lock == "percpu" ? sched::CallLockMode::PerCpu : sched::CallLockMode::Global,
            locks, [&ex](uint32_t c) { ex.kick_context(c); }) {
    ex.set_cross_call(&cc_);
    mm::PodParams pp;
    pp.target = cfg.pod_target_granules();
    pp.stride = cfg.sweep_stride;
    pp.limit = cfg.sweep_limit;
    mm::parse_pod_reclaim(cfg.pod_reclaim, pp.reclaim);  // validated by RunConfig
    for (vmm::Vm* vm : vms) {
      pp.vm = vm->index();
      uint8_t* ram = vm->memory().host_base() + KS_RAM_GPA;
      auto flush = [this, vm, skip = skip_flushes] {
        if (skip) return;
        // The EPT-like flush (ept_sync_domain): every context is marked to invalidate before
        // its next entry of the VM; those in its dirty mask also drop its TLB entries at once,
        // on their own threads, before they ack (exit handlers use the TLB between entries).
        // The initiator is whoever populates: a context populating for a VMM-side access (it
        // answers calls aimed at itself while it waits), or a fault thread acting for the
        // context whose fault it serves (that context is blocked in the fault meanwhile: its
        // run queue waits, as a Xen pCPU's does while it flushes).
        const uint32_t id = vm->index();
        const int self = ex_.context_of_thread(uint32_t(gettid()));
        ex_.p2m_sync(*vm).flush(
            cc_, [this, id](uint32_t c) { ex_.tlb(c).invalidate_vm(id); }, self,
            self >= 0 ? self : acting_for);
      };
      // PoD covers RAM above KS_RAM_GPA; exit handlers see its p2m through the PodVm.
      pods_.push_back(std::make_unique<VmPod>(
          vm, std::make_unique<mm::PodVm>(
                  ram, vm->memory().size() - KS_RAM_GPA, cfg.pod_granule, pp, uffd_,
                  locks.make("pod", "pod[vm" + std::to_string(vm->index()) + "]"), flush,
                  KS_RAM_GPA, [this, vm] { out_of_memory(*vm); })));
      pods_.back()->ram = uintptr_t(ram);
      vm->set_p2m_epochs(pods_.back()->pod.get());
      pod_of_vm_.emplace(vm, pods_.back().get());
    }
    // Faults find their VM by address: a binary search instead of a scan of every VM.
    for (auto& p : pods_) by_address_.push_back(p.get());
    std::sort(by_address_.begin(), by_address_.end(),
              [](const VmPod* a, const VmPod* b) { return a->ram < b->ram; });
    // By default one fault thread per pCPU: as many initiators can flush at once as there are
    // pCPUs that can fault at once, as in Xen where the faulting pCPU itself initiates.
    // In a process of a sharded run (--procs): the pCPUs of its own pool.
    fault_threads_ = cfg.fault_threads ? cfg.fault_threads : std::min(64u, cfg.shard_pcpus());
    try {
      faults_ = std::make_unique<mm::FaultService>(
          uffd_, int(fault_threads_), [this](const mm::FaultEvent& ev) { on_fault(ev); },
          read_faults);
    } catch (...) {
      detach();  // the executor and the VMs must not keep pointers into what is destroyed
      throw;
    }
  }
  // Liveness, from the run loop: false once a fault has waited unread for a second while no
  // fault thread was busy (reads are served within microseconds otherwise).
  bool faults_served(uint64_t now) { return !faults_ || faults_->serving(now, kFaultPatienceNs); }
  static constexpr uint64_t kFaultPatienceNs = 1000000000;
  ~PodRuntime() {
    stop();
    detach();
  }
  // Takes the cross-call and the VMs' p2m views back from the executor and the VMs (they outlive
  // this runtime; nothing may run on them by then).
  void detach() {
    ex_.set_cross_call(nullptr);
    for (auto& p : pods_) p->vm->set_p2m_epochs(nullptr);
  }
  // Stops serving faults (joins the service threads); reports are exact only after this.
  void stop() {
    if (faults_) fault_events_ = faults_->events();
    faults_.reset();
  }

  nlohmann::json vm_report(const vmm::Vm& vm) const {
    auto it = pod_of_vm_.find(&vm);
    if (it == pod_of_vm_.end()) return nullptr;
    const VmPod& p = *it->second;
    nlohmann::json r = p.pod->report();
    const sched::P2mSync& s = ex_.p2m_sync(vm);
    r["flush_mask_mean"] = s.flushes() ? double(s.mask_total()) / double(s.flushes()) : 0.0;
    r["flush_mask_max"] = s.mask_max();
    r["fault_stall_ns"] = p.stall_ns.load();
    r["fault_stall_max_ns"] = p.stall_max_ns.load();
    return r;
  }
  nlohmann::json report() const {
    nlohmann::json r = cc_.report();
    r["fault_events"] = fault_events_;
    r["fault_threads"] = fault_threads_;
    uint64_t flushes = 0, mask_total = 0, mask_max = 0;
    for (const auto& p : pods_) {
      const sched::P2mSync& s = ex_.p2m_sync(*p->vm);
      flushes += s.flushes();
      mask_total += s.mask_total();
      mask_max = std::max(mask_max, s.mask_max());
    }
    r["flushes"] = flushes;  // including those with an empty mask (no call, marks only)
    r["flush_mask_mean"] = flushes ? double(mask_total) / double(flushes) : 0.0;
    r["flush_mask_max"] = mask_max;
    r["out_of_memory_vms"] = oom_.load();
    return r;
  }

 private:
  // One VM's PoD.
  struct VmPod {
    VmPod(vmm::Vm* v, std::unique_ptr<mm::PodVm> p) : vm(v), pod(std::move(p)) {}
    vmm::Vm* vm;
    std::unique_ptr<mm::PodVm> pod;
    uintptr_t ram = 0;  // host address of the RAM its PoD covers
    // Time its vCPUs waited on faults while a service thread resolved them (from reading the
    // fault to waking the vCPU; the kernel's delivery before that is not visible here).
    std::atomic<uint64_t> stall_ns{0}, stall_max_ns{0};
  };
  // The VM whose PoD RAM holds `address`, or null.
  VmPod* pod_at(uint64_t address) const {
    auto after = std::upper_bound(by_address_.begin(), by_address_.end(), address,
                                  [](uint64_t a, const VmPod* p) { return a < p->ram; });
    if (after == by_address_.begin()) return nullptr;
    VmPod* p = *std::prev(after);
    return p->pod->contains(address) ? p : nullptr;
  }
  void on_fault(const mm::FaultEvent& ev) {
    if (VmPod* found = pod_at(ev.address)) {
      VmPod& p = *found;
      // The faulting context cannot answer cross-calls until its fault is resolved.
      int ctx = ex_.context_of_thread(ev.tid);
      if (ctx >= 0) cc_.set_stalled(uint32_t(ctx), true);
      const uint64_t t0 = now_ns();
      acting_for = ctx;
      mm::PodVm::Outcome o = p.pod->handle(ev);
      acting_for = -1;
      const uint64_t stalled = now_ns() - t0;
      if (ctx >= 0) cc_.set_stalled(uint32_t(ctx), false);
      p.stall_ns.fetch_add(stalled, std::memory_order_relaxed);
      uint64_t prev = p.stall_max_ns.load(std::memory_order_relaxed);
      while (stalled > prev && !p.stall_max_ns.compare_exchange_weak(prev, stalled)) {
      }
      if (o == mm::PodVm::Outcome::OutOfMemory) out_of_memory(*p.vm);
    }
  }
  // Xen crashes the domain ("out of PoD memory"): only this VM stops.
  void out_of_memory(vmm::Vm& vm) {
    if (!vm.crash("out of PoD memory")) return;
    oom_.fetch_add(1);
    ex_.stop_vm(vm);  // kicks its vCPUs out of guest mode and wakes blocked ones
  }

  // The context whose fault this fault thread is serving (-1: none).
  static inline thread_local int acting_for = -1;
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
