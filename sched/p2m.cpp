#include "sched/p2m.hpp"

#include <sys/types.h>
#include <unistd.h>

#include <stdexcept>

#include "locks/common.hpp"
#include "locks/probe.hpp"
#include "mm/pod_vm.hpp"

namespace kvmscale::sched {

P2m::P2m(uint32_t vm, std::span<mm::SoftTlb> tlbs, const ContextThreads* threads)
    : vm_(vm),
      tlbs_(tlbs),
      threads_(threads),
      dirty_(uint32_t(tlbs.size())),
      invalidate_(uint32_t(tlbs.size())) {}

P2m::~P2m() = default;

bool P2m::before_entry(uint32_t c) {
  if (!invalidate_.test_and_clear(c, kSc)) return false;
  tlbs_[c].invalidate_vm(vm_);
  return true;
}

void P2m::enter(uint32_t c, P2m*& held, P2m& next) {
  if (held != &next) {
    if (held) held->leave(c);
    next.join(c);  // before the check of the mark: see the Dekker pair in p2m.hpp
    held = &next;
  }
  next.before_entry(c);
}

void P2m::attach_pod(mm::PodVm& pod, CrossCall* cc) {
  if (cc ? cc->npcpus() != contexts() : contexts() != 0)
    throw std::logic_error("P2m: the cross-call's contexts are not the executor's");
  if (pod.granule() == 0 || pod.size() % pod.granule() != 0)
    throw std::logic_error("P2m: PoD RAM is not a whole number of granules");
  // Everything that can throw first: a failed attach leaves the p2m as it was.
  auto epochs = std::make_unique<std::atomic<uint32_t>[]>(pod.size() / pod.granule());
  fenced_.clear();
  fenced_.reserve(64);
  epochs_ = std::move(epochs);
  pod_base_ = pod.gpa_base();
  pod_len_ = pod.size();
  granule_ = pod.granule();
  pod_ = &pod;
  cc_ = cc;
}

void P2m::detach_pod() {
  pod_ = nullptr;
  cc_ = nullptr;
  skip_flushes_ = false;
}

std::atomic<uint32_t>* P2m::epoch_slot(uint64_t gpa) const {
  if (!epochs_ || gpa < pod_base_ || gpa - pod_base_ >= pod_len_) return nullptr;
  return &epochs_[(gpa - pod_base_) / granule_];
}

uint32_t P2m::epoch(uint64_t gpa) const {
  const std::atomic<uint32_t>* e = epoch_slot(gpa);
  return e ? e->load(std::memory_order_acquire) : 0;
}

void P2m::fence(uint64_t gpa) {
  std::atomic<uint32_t>* e = epoch_slot(gpa);
  if (!e) throw std::logic_error("P2m::fence: not PoD RAM");
  e->fetch_add(1, std::memory_order_release);  // odd: fenced, its flush not yet completed
  fenced_.push_back((gpa - pod_base_) / granule_);
}

CpuSet P2m::prepare_flush() {
  invalidate_.fill(kSc);
  CpuSet targets = dirty();
  const uint64_t n = targets.count();
  flushes_.fetch_add(1, std::memory_order_relaxed);
  mask_total_.fetch_add(n, std::memory_order_relaxed);
  KS_PROBE(flush, vm_, n);
  locks::raise_to_max(mask_max_, n);
  return targets;
}

void P2m::flush() {
  if (!skip_flushes_) {
    const CpuSet targets = prepare_flush();
    if (!targets.empty()) {
      if (!cc_) throw std::logic_error("P2m::flush: contexts hold the VM but no cross-call");
      // Targets drop the VM's TLB entries at once, on their own threads, before they ack: exit
      // handlers use the TLB between entries (Xen's function is empty: its invalidation waits
      // for VM entry). An excused (stalled) target runs this at its next safe point.
      const int self = threads_ ? threads_->find(uint32_t(gettid())) : -1;
      cc_->on_selected_cpus(
          targets, [this](uint32_t c) { tlbs_[c].invalidate_vm(vm_); }, self);
    }
  }
  // The flush has completed: translations cached before the fences are stale from now on.
  for (uint64_t g : fenced_) epochs_[g].fetch_add(1, std::memory_order_release);
  fenced_.clear();
}

bool P2m::get_page(uint64_t gpa, const std::function<void()>& poll) {
  return pod_ ? pod_->get_page(gpa, poll) : true;
}

void P2m::put_page(uint64_t gpa) {
  if (pod_) pod_->put_page(gpa);
}

}  // namespace kvmscale::sched
