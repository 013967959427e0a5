#include "app/pod_runtime.hpp"

#include <algorithm>
#include <string>

#include "guests/include/kvmscale_abi.h"
#include "locks/common.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::app {

PodRuntime::PodRuntime(const RunConfig& cfg, const std::vector<vmm::Vm*>& vms, sched::Executor& ex,
                       locks::LockRegistry& locks, bool skip_flushes, bool read_faults)
    : ex_(ex),
      cc_(ex.contexts(),
          cfg.call_lock == "percpu" ? sched::CallLockMode::PerCpu : sched::CallLockMode::Global,
          locks, [&ex](uint32_t c) { ex.kick_context(c); }) {
  mm::PodParams pp;
  pp.target = cfg.pod_target_granules();
  pp.stride = cfg.sweep_stride;
  pp.limit = cfg.sweep_limit;
  mm::parse_pod_reclaim(cfg.pod_reclaim, pp.reclaim);  // validated by RunConfig
  try {
    ex.set_cross_call(&cc_);
    for (vmm::Vm* vm : vms) {
      pp.vm = vm->index();
      uint8_t* ram = vm->memory().host_base() + KS_RAM_GPA;
      sched::P2m& p2m = ex.p2m(*vm);
      auto p = std::make_unique<VmPod>();
      p->vm = vm;
      p->ram = uintptr_t(ram);
      // PoD covers RAM above KS_RAM_GPA; the VM's p2m view fences and flushes for it, and exit
      // handlers populate through the p2m.
      p->pod = std::make_unique<mm::PodVm>(
          ram, vm->memory().size() - KS_RAM_GPA, cfg.pod_granule, pp, uffd_,
          locks.make("pod", "pod[vm" + std::to_string(vm->index()) + "]"), p2m, KS_RAM_GPA,
          [this, vm] { out_of_memory(*vm); });
      pods_.push_back(std::move(p));  // first: detach() must find every attached one
      p2m.attach_pod(*pods_.back()->pod, &cc_);
      p2m.skip_flushes_for_test(skip_flushes);
      pod_of_vm_.emplace(vm, pods_.back().get());
    }
    // Faults find their VM by address: a binary search instead of a scan of every VM.
    for (auto& p : pods_) by_address_.push_back(p.get());
    std::sort(by_address_.begin(), by_address_.end(),
              [](const VmPod* a, const VmPod* b) { return a->ram < b->ram; });
    // By default one fault thread per pCPU: as many initiators can flush at once as there are
    // pCPUs that can fault at once, as in Xen where the faulting pCPU itself initiates.
    // In a process of a sharded run (--procs): the pCPUs of its own pool.
    fault_threads_ = fault_threads_for(cfg);
    faults_ = std::make_unique<mm::FaultService>(
        uffd_, int(fault_threads_), [this](const mm::FaultEvent& ev) { on_fault(ev); },
        read_faults);
  } catch (...) {
    detach();  // the executor and the p2m views must not keep pointers into what is destroyed
    throw;
  }
}

PodRuntime::~PodRuntime() {
  stop();
  detach();
}

void PodRuntime::detach() {
  ex_.set_cross_call(nullptr);
  for (auto& p : pods_) ex_.p2m(*p->vm).detach_pod();
}

void PodRuntime::stop() {
  if (faults_) fault_events_ = faults_->events();
  faults_.reset();
}

nlohmann::json PodRuntime::vm_report(const vmm::Vm& vm) const {
  auto it = pod_of_vm_.find(&vm);
  if (it == pod_of_vm_.end()) return nullptr;
  const VmPod& p = *it->second;
  nlohmann::json r = p.pod->report();
  const sched::P2m& s = ex_.p2m(vm);
  r["flush_mask_mean"] = s.flushes() ? double(s.mask_total()) / double(s.flushes()) : 0.0;
  r["flush_mask_max"] = s.mask_max();
  r["fault_stall_ns"] = p.stall_ns.load();
  r["fault_stall_max_ns"] = p.stall_max_ns.load();
  return r;
}

nlohmann::json PodRuntime::report() const {
  nlohmann::json r = cc_.report();
  r["fault_events"] = fault_events_;
  r["fault_threads"] = fault_threads_;
  uint64_t flushes = 0, mask_total = 0, mask_max = 0;
  for (const auto& p : pods_) {
    const sched::P2m& s = ex_.p2m(*p->vm);
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

PodRuntime::VmPod* PodRuntime::pod_at(uint64_t address) const {
  auto after = std::upper_bound(by_address_.begin(), by_address_.end(), address,
                                [](uint64_t a, const VmPod* p) { return a < p->ram; });
  if (after == by_address_.begin()) return nullptr;
  VmPod* p = *std::prev(after);
  return p->pod->contains(address) ? p : nullptr;
}

void PodRuntime::on_fault(const mm::FaultEvent& ev) {
  VmPod* p = pod_at(ev.address);
  if (!p) return;
  mm::PodVm::Outcome o;
  uint64_t stalled;
  {
    // The faulting context cannot answer cross-calls until its fault is resolved, and this
    // thread's flushes are its (the initiator is the faulting pCPU, as in Xen).
    sched::CrossCall::ServingFault serving(cc_, ex_.context_of_thread(ev.tid));
    const uint64_t t0 = now_ns();
    o = p->pod->handle(ev);
    stalled = now_ns() - t0;
  }
  p->stall_ns.fetch_add(stalled, std::memory_order_relaxed);
  locks::raise_to_max(p->stall_max_ns, stalled);
  if (o == mm::PodVm::Outcome::OutOfMemory) out_of_memory(*p->vm);
}

void PodRuntime::out_of_memory(vmm::Vm& vm) {
  if (!vm.crash("out of PoD memory")) return;
  oom_.fetch_add(1);
  ex_.stop_vm(vm);  // kicks its vCPUs out of guest mode and wakes blocked ones
}

}  // namespace kvmscale::app
