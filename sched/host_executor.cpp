#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "mm/arena.hpp"
#include "sched/context_threads.hpp"
#include "sched/executor.hpp"
#include "sched/wake_slot.hpp"

namespace kvmscale::sched {
namespace {

size_t count_vcpus(const std::vector<vmm::Vm*>& vms) {
  size_t n = 0;
  for (const vmm::Vm* vm : vms) n += vm->nr_vcpus();
  return n;
}

class HostExecutor final : public Executor {
 public:
  explicit HostExecutor(std::vector<vmm::Vm*> vms)
      : vms_(std::move(vms)),
        stacks_(count_vcpus(vms_), mm::kArenaStackSize, "vCPU thread stacks") {
    for (auto* vm : vms_) {
      index_of_.emplace(vm, index_of_.size());
      first_context_.push_back(uint32_t(total_));
      slots_.emplace_back();
      for (uint32_t i = 0; i < vm->nr_vcpus(); i++) {
        slots_.back().push_back(std::make_unique<Slot>());
        total_++;
      }
    }
    threads_of_ = std::make_unique<ContextThreads>(total_);
    tlbs_.resize(total_);
    for (auto* vm : vms_)
      p2m_.push_back(std::make_unique<P2m>(vm->index(), std::span(tlbs_), threads_of_.get()));
  }
  ~HostExecutor() override { stop(); }

  const char* name() const override { return "host"; }

  void start() override {
    live_.store(total_);
    threads_.reserve(total_);  // a push_back that throws would join a running vCPU thread
    try {
      for (size_t m = 0; m < vms_.size(); m++)
        for (uint32_t i = 0; i < vms_[m]->nr_vcpus(); i++)
          threads_.push_back(mm::StackThread::start(
              stacks_, threads_.size(),
              "the thread of vCPU " + std::to_string(i) + " of vm" +
                  std::to_string(vms_[m]->index()) + " (" + std::to_string(threads_.size() + 1) +
                  " of " + std::to_string(total_) + " vCPU threads)",
              [this, m, i] { vcpu_thread(m, i); }));
    } catch (...) {
      // The vCPUs that never started are gone for cross-calls; stop and join the others.
      for (size_t c = threads_.size(); c < total_; c++)
        if (cc_) cc_->set_stalled(uint32_t(c), true, CrossCall::kGone);
      stop();
      throw;
    }
  }

  bool all_done() const override { return live_.load() == 0; }

  uint32_t contexts() const override { return uint32_t(total_); }
  void kick_context(uint32_t c) override { slot_of(c).kicker.kick(); }
  P2m& p2m(const vmm::Vm& vm) const override {
    auto it = index_of_.find(&vm);
    if (it == index_of_.end()) throw std::out_of_range("p2m: not a VM of this executor");
    return *p2m_[it->second];
  }
  int context_of_thread(uint32_t tid) const override { return threads_of_->find(tid); }
  void set_cross_call(CrossCall* cc) override { cc_ = cc; }
  mm::SoftTlb& tlb(uint32_t c) override { return tlbs_[c]; }
  void stop_vm(vmm::Vm& vm) override {
    if (auto it = index_of_.find(&vm); it != index_of_.end()) stop_vm(it->second);
  }

  void stop() override {
    stopping_.store(true);
    for (auto& per_vm : slots_)
      for (auto& s : per_vm) {
        s->kicker.kick();
        s->wake.interrupt();
      }
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  struct Slot {
    WakeSlot wake;
    vmm::Kicker kicker;
  };

  void stop_vm(size_t m) {
    for (auto& s : slots_[m]) {
      s->kicker.kick();
      s->wake.interrupt();
    }
  }

  Slot& slot_of(uint32_t c) const {
    size_t m = size_t(std::upper_bound(first_context_.begin(), first_context_.end(), c) -
                      first_context_.begin()) -
               1;
    return *slots_[m][c - first_context_[m]];
  }

  void vcpu_thread(size_t m, uint32_t i) {
    vmm::Vm& vm = *vms_[m];
    vmm::Vcpu& v = vm.vcpu(i);
    Slot& slot = *slots_[m][i];
    const uint32_t ctx = first_context_[m] + i;
    threads_of_->register_current(ctx);
    vmm::Kicker& kicker = slot.kicker;
    kicker.bind_current_thread();
    const std::function<void()> safe_point = [this, ctx] {
      if (cc_) cc_->safe_point(ctx);
    };
    // A vCPU thread only ever holds its own VM: it joins the dirty mask once, before its first
    // entry, and honours the invalidate marks before every entry (sched/p2m.hpp).
    P2m& p2m = *p2m_[m];
    const vmm::PcpuAccess access{&tlbs_[ctx], &safe_point, p2m.exit_view()};
    p2m.join(ctx);
    while (!stopping_.load(std::memory_order_relaxed) && !vm.stopped()) {
      p2m.before_entry(ctx);
      if (cc_) cc_->set_in_guest(ctx, true);  // until the exit handler's first safe point
      vmm::Action a = vm.run_once(v, kicker, access);
      if (cc_) cc_->safe_point(ctx);  // answer flushes before going on
      using K = vmm::Action::Kind;
      if (a.kind == K::Yield) {
        sched_yield();
      } else if (a.kind == K::Block) {
        if (cc_) cc_->set_stalled(ctx, true, CrossCall::kIdle);  // blocked: cannot answer
        v.set_hcall_result(slot.wake.wait(a.value) ? 0 : 1);
        if (cc_) {
          cc_->set_stalled(ctx, false, CrossCall::kIdle);
          cc_->serve(ctx);
        }
      } else if (a.kind == K::Wake) {
        slots_[m][a.value]->wake.wake();
      } else if (a.kind == K::Exit) {
        vm.vcpu_exited(v, static_cast<int64_t>(a.value));
        break;
      } else if (a.kind == K::Crash) {
        if (vm.crash(a.reason)) stop_vm(m);
        break;
      }
    }
    if (cc_) cc_->set_stalled(ctx, true, CrossCall::kGone);  // never wait for it again
    live_.fetch_sub(1);
  }

  std::vector<vmm::Vm*> vms_;
  std::unordered_map<const vmm::Vm*, size_t> index_of_;  // into vms_: per-VM lookups are O(1)
  std::vector<std::vector<std::unique_ptr<Slot>>> slots_;
  // One stack per vCPU thread from one mapping: thousands of threads start and end without a
  // mapping change each (mm/arena.hpp).
  mm::Arena stacks_;
  std::vector<mm::StackThread> threads_;
  std::vector<uint32_t> first_context_;  // per VM: context index of its vCPU 0
  std::unique_ptr<ContextThreads> threads_of_;
  std::vector<mm::SoftTlb> tlbs_;          // per vCPU thread
  std::vector<std::unique_ptr<P2m>> p2m_;  // per VM
  CrossCall* cc_ = nullptr;
  size_t total_ = 0;
  std::atomic<size_t> live_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace

std::unique_ptr<Executor> make_host_executor(std::vector<vmm::Vm*> vms) {
  return std::make_unique<HostExecutor>(std::move(vms));
}

}  // namespace kvmscale::sched
