#include <sched.h>

#include <atomic>
#include <thread>

#include "sched/executor.hpp"
#include "sched/wake_slot.hpp"

namespace kvmscale::sched {
namespace {

class HostExecutor final : public Executor {
 public:
  explicit HostExecutor(std::vector<vmm::Vm*> vms) : vms_(std::move(vms)) {
    for (auto* vm : vms_) {
      slots_.emplace_back();
      for (uint32_t i = 0; i < vm->nr_vcpus(); i++) {
        slots_.back().push_back(std::make_unique<Slot>());
        total_++;
      }
    }
  }
  ~HostExecutor() override { stop(); }

  const char* name() const override { return "host"; }

  void start() override {
    live_.store(total_);
    for (size_t m = 0; m < vms_.size(); m++)
      for (uint32_t i = 0; i < vms_[m]->nr_vcpus(); i++)
        threads_.emplace_back([this, m, i] { vcpu_thread(m, i); });
  }

  bool all_done() const override { return live_.load() == 0; }

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

  void vcpu_thread(size_t m, uint32_t i) {
    vmm::Vm& vm = *vms_[m];
    vmm::Vcpu& v = vm.vcpu(i);
    Slot& slot = *slots_[m][i];
    vmm::Kicker& kicker = slot.kicker;
    kicker.bind_current_thread();
    while (!stopping_.load(std::memory_order_relaxed) && !vm.stopped()) {
      vmm::Action a = vm.run_once(v, kicker);
      using K = vmm::Action::Kind;
      if (a.kind == K::Yield) {
        sched_yield();
      } else if (a.kind == K::Block) {
        v.set_hcall_result(slot.wake.wait(a.value) ? 0 : 1);
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
    live_.fetch_sub(1);
  }

  std::vector<vmm::Vm*> vms_;
  std::vector<std::vector<std::unique_ptr<Slot>>> slots_;
  std::vector<std::thread> threads_;
  size_t total_ = 0;
  std::atomic<size_t> live_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace

std::unique_ptr<Executor> make_host_executor(std::vector<vmm::Vm*> vms) {
  return std::make_unique<HostExecutor>(std::move(vms));
}

}  // namespace kvmscale::sched
