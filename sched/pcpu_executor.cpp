// `--sched credit|rr`: P host threads act as pCPUs and run vCPUs chosen by CreditScheduler.
//
// Accounting (csched_acct) is due every timeslice at the master pCPU's tick, as before, but the
// pass runs on a thread of its own: O(active vCPUs) under the accounting lock, it no longer eats
// into pCPU 0's ticks and slices at 10,000 vCPUs (docs/scheduler.md).
//
// Preemption: each pCPU has a POSIX timer that sends the kick signal to its own thread at the next
// tick, slice end or block timeout; the signal only gets through inside KVM_RUN (see
// vmm/kick.hpp), so it forces exactly one return to the pCPU loop. Idle pCPUs sleep on a condition
// variable until tickled or their earliest timer. Block timeouts live on the pCPU where the vCPU
// blocked (BlockTimers, sched/pcpu_sequence.hpp), as Xen's timers are per CPU: on the hot path only
// pCPU threads take run-queue locks.
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "mm/thread_start.hpp"
#include "sched/context_threads.hpp"
#include "sched/credit.hpp"
#include "sched/executor.hpp"
#include "sched/p2m.hpp"
#include "sched/pcpu_sequence.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::sched {
namespace {

struct ExecVcpu {
  vmm::Vm* vm;
  vmm::Vcpu* vcpu;
  SchedVcpu* sv = nullptr;
  P2m* p2m = nullptr;  // its VM's p2m view (dirty mask, invalidate marks, epochs)
  std::atomic<bool> finished{false};
  std::atomic<uint64_t> timer_gen{0};  // block generation of its newest timeout (BlockTimers)
};

class PcpuExecutor final : public Executor, public PcpuSignals {
 public:
  PcpuExecutor(std::vector<vmm::Vm*> vms, const PcpuOptions& opt, locks::LockRegistry& locks)
      : opt_(opt) {
    std::vector<int> nodes(opt.npcpus, 0);
    host_cpu_.assign(opt.npcpus, -1);
    if (opt.bind) {
      const std::vector<int> run_wide = bound_host_cpus(opt.first_pcpu + opt.npcpus);
      host_cpu_.assign(run_wide.begin() + opt.first_pcpu, run_wide.end());
      for (uint32_t p = 0; p < opt.npcpus; p++) nodes[p] = node_of_host_cpu(host_cpu_[p]);
    }
    for (uint32_t p = 0; p < opt.npcpus; p++) pcpus_.push_back(std::make_unique<Pcpu>());
    threads_of_ = std::make_unique<ContextThreads>(opt.npcpus);
    tlbs_.resize(opt.npcpus);
    CreditParams params = opt.params;
    params.account_on_tick = false;  // accounting_loop() runs the passes pCPU 0's tick asks for
    sched_ = std::make_unique<CreditScheduler>(opt.npcpus, params, locks, *this, nodes);
    uint32_t global = 0;
    for (size_t m = 0; m < vms.size(); m++) {
      vmm::Vm* vm = vms[m];
      SchedDomain& d = sched_->add_domain(opt.weight_of(vm->index()), opt.cap_of(vm->index()));
      p2m_.emplace(vm->index(),
                   std::make_unique<P2m>(vm->index(), std::span(tlbs_), threads_of_.get()));
      for (uint32_t i = 0; i < vm->nr_vcpus(); i++, global++) {
        auto ev = std::make_unique<ExecVcpu>();
        ev->vm = vm;
        ev->vcpu = &vm->vcpu(i);
        ev->sv = &sched_->add_vcpu(d, opt.affinity_of(global), ev.get());
        by_vm_[vm->index()].push_back(ev.get());
        ev->p2m = p2m_[vm->index()].get();
        vcpus_.push_back(std::move(ev));
      }
    }
    live_.store(vcpus_.size());
  }
  ~PcpuExecutor() override { stop(); }

  const char* name() const override { return opt_.params.round_robin ? "rr" : "credit"; }

  void start() override {
    start_ns_ = now_ns();
    sched_->start(start_ns_);
    try {
      for (uint32_t p = 0; p < pcpus_.size(); p++)
        threads_.push_back(mm::start_thread(
            "pCPU thread " + std::to_string(p + 1) + " of " + std::to_string(pcpus_.size()),
            [this, p] { pcpu_loop(p); }));
      if (!opt_.params.round_robin)
        accounting_ =
            mm::start_thread("the credit accounting thread", [this] { accounting_loop(); });
    } catch (...) {
      // The pCPUs that never started are gone for cross-calls; stop and join the others.
      for (size_t p = threads_.size(); p < pcpus_.size(); p++)
        if (cc_) cc_->set_stalled(uint32_t(p), true, CrossCall::kGone);
      stop();
      throw;
    }
  }

  bool all_done() const override { return live_.load() == 0; }

  void stop() override {
    if (stopped_.exchange(true)) return;
    stopping_.store(true);
    for (uint32_t p = 0; p < pcpus_.size(); p++) tickle(p);
    {
      std::lock_guard g(acct_mu_);  // stopping_ is seen by the wait or the wait is woken
    }
    acct_cv_.notify_one();
    for (auto& t : threads_) t.join();
    threads_.clear();
    if (accounting_.joinable()) accounting_.join();
    end_ns_ = now_ns();
  }

  uint32_t contexts() const override { return uint32_t(pcpus_.size()); }
  void kick_context(uint32_t c) override { tickle(c); }
  P2m& p2m(const vmm::Vm& vm) const override { return *p2m_.at(vm.index()); }
  int context_of_thread(uint32_t tid) const override { return threads_of_->find(tid); }
  void set_cross_call(CrossCall* cc) override { cc_ = cc; }
  mm::SoftTlb& tlb(uint32_t c) override { return tlbs_[c]; }
  void stop_vm(vmm::Vm& vm) override { crash_vm(&vm, now_ns()); }

  // PcpuSignals: wake the pCPU if it sleeps, kick it out of guest mode if it runs a vCPU.
  void tickle(uint32_t p) override {
    Pcpu& pc = *pcpus_[p];
    {
      std::lock_guard g(pc.idle_mu);
      pc.tickled = true;
    }
    pc.idle_cv.notify_one();
    pc.kicker.kick();
  }

  nlohmann::json report() const override {
    nlohmann::json r = sched_->report();
    uint64_t wall = end_ns_ > start_ns_ ? end_ns_ - start_ns_ : 0;
    uint64_t sched_total = 0;
    for (uint32_t p = 0; p < pcpus_.size(); p++) {
      sched_total += pcpus_[p]->sched_ns;
      r["pcpus"][p]["sched_ns"] = pcpus_[p]->sched_ns;
      r["pcpus"][p]["busy_ns"] = pcpus_[p]->busy_ns;
      r["pcpus"][p]["idle_ns"] = wall > pcpus_[p]->busy_ns ? wall - pcpus_[p]->busy_ns : 0;
      r["pcpus"][p]["host_cpu"] = host_cpu_[p];
    }
    // CPU share per VM against its weight, and Jain's index over run_ns / weight.
    nlohmann::json vms = nlohmann::json::array();
    double sum = 0, sum_sq = 0;
    uint64_t total = 0;
    std::vector<std::pair<uint64_t, uint32_t>> per_vm;
    for (const auto& [vm, list] : by_vm_) {
      uint64_t run = 0;
      for (const ExecVcpu* ev : list) run += ev->sv->stats.run_ns;
      per_vm.push_back({run, list[0]->sv->dom->weight});
      total += run;
    }
    size_t i = 0;
    for (const auto& [vm, list] : by_vm_) {
      auto [run, weight] = per_vm[i++];
      double x = double(run) / weight;
      sum += x;
      sum_sq += x * x;
      vms.push_back({{"vm", vm},
                     {"weight", weight},
                     {"cap", list[0]->sv->dom->cap},
                     {"run_ns", run},
                     {"cpu_share", total ? double(run) / double(total) : 0.0},
                     {"pcpu_fraction", wall ? double(run) / double(wall) : 0.0}});
    }
    r["vms"] = vms;
    r["jain_fairness"] = sum_sq > 0 ? sum * sum / (double(per_vm.size()) * sum_sq) : 1.0;
    r["wall_ns"] = wall;
    // The accounting thread's passes count as scheduler overhead, as they did inside pCPU 0's tick.
    sched_total += accounting_ns_;
    r["sched_overhead"] = wall ? double(sched_total) / (double(wall) * double(pcpus_.size())) : 0.0;
    r["accounting_ns"] = accounting_ns_;
    return r;
  }

 private:
  struct Pcpu {
    vmm::Kicker kicker;
    std::mutex idle_mu;
    std::condition_variable idle_cv;
    bool tickled = false;
    uint64_t busy_ns = 0;   // inside KVM_RUN (PcpuSequence::busy_ns); set when its thread ends
    uint64_t sched_ns = 0;  // in tick(), schedule() (with balancing), timers; idem
  };

  void finish(ExecVcpu& ev, uint64_t now) {
    sched_->finish(*ev.sv, now);
    if (!ev.finished.exchange(true)) live_.fetch_sub(1);
  }

  void crash_vm(const vmm::Vm* vm, uint64_t now) {
    for (ExecVcpu* ev : by_vm_.at(vm->index())) finish(*ev, now);
  }

  // Sleeps until tickled or `until` (0: until tickled).
  void idle_wait(Pcpu& pc, uint64_t until) {
    std::unique_lock lock(pc.idle_mu);
    auto ready = [&] { return pc.tickled || stopping_.load(); };
    if (until == 0)
      pc.idle_cv.wait(lock, ready);
    else {
      uint64_t now = now_ns();
      if (until > now) pc.idle_cv.wait_for(lock, std::chrono::nanoseconds(until - now), ready);
    }
    pc.tickled = false;
  }

  timer_t make_timer() {
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = vmm::kKickSignal;
    sev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
    timer_t t{};
    if (timer_create(CLOCK_MONOTONIC, &sev, &t) != 0)
      throw std::runtime_error(std::string("timer_create: ") + std::strerror(errno));
    return t;
  }

  // pCPU 0's tick found a pass due: hand it to the accounting thread. A pass asked for while one
  // runs is merged into the next (a late pass is not repeated, as in tick()).
  void request_accounting() {
    {
      std::lock_guard g(acct_mu_);
      acct_due_ = true;
    }
    acct_cv_.notify_one();
  }

  void accounting_loop() {
    std::unique_lock lock(acct_mu_);
    for (;;) {
      acct_cv_.wait(lock, [this] { return acct_due_ || stopping_.load(); });
      if (stopping_.load()) return;
      acct_due_ = false;
      lock.unlock();
      const uint64_t now = now_ns();
      sched_->account(now);
      accounting_ns_ += now_ns() - now;
      lock.lock();
    }
  }

  // pCPU p's environment for PcpuSequence: KVM_RUN with this thread's kicker, a POSIX timer that
  // kicks it, the condition-variable idle.
  class KvmEnv final : public PcpuEnv {
   public:
    KvmEnv(PcpuExecutor& x, uint32_t p, timer_t timer)
        : x_(x), p_(p), pc_(*x.pcpus_[p]), timer_(timer), safe_point_([&x, p] {
            if (x.cc_) x.cc_->safe_point(p);
          }) {}
    uint64_t now() override { return now_ns(); }
    void idle_until(uint64_t until) override { x_.idle_wait(pc_, until); }
    void arm_timer(uint64_t at) override {
      itimerspec its{};
      its.it_value.tv_sec = time_t(at / 1000000000ull);
      its.it_value.tv_nsec = long(at % 1000000000ull);
      timer_settime(timer_, TIMER_ABSTIME, &its, nullptr);
    }
    void request_accounting() override { x_.request_accounting(); }
    vmm::Action run_guest(SchedVcpu& v) override {
      ExecVcpu& ev = of(v);
      return ev.vm->run_once(*ev.vcpu, pc_.kicker,
                             {&x_.tlbs_[p_], &safe_point_, ev.p2m->exit_view()});
    }
    bool vm_stopped(SchedVcpu& v) override { return of(v).vm->stopped(); }
    void set_hcall_result(SchedVcpu& v, uint64_t r) override { of(v).vcpu->set_hcall_result(r); }
    void finish(SchedVcpu& v, uint64_t now) override { x_.finish(of(v), now); }
    SchedVcpu& wake_target(SchedVcpu& v, uint64_t index) override {
      return *x_.by_vm_.at(of(v).vm->index())[index]->sv;
    }
    void exited(SchedVcpu& v, int64_t code, uint64_t now) override {
      ExecVcpu& ev = of(v);
      ev.vm->vcpu_exited(*ev.vcpu, code);
      x_.finish(ev, now);
    }
    void crashed(SchedVcpu& v, const std::string& reason, uint64_t now) override {
      ExecVcpu& ev = of(v);
      if (ev.vm->crash(reason))
        x_.crash_vm(ev.vm, now);
      else
        x_.finish(ev, now);
    }
    std::atomic<uint64_t>& timer_gen(SchedVcpu& v) override { return of(v).timer_gen; }
    P2m* p2m(SchedVcpu& v) override { return of(v).p2m; }

   private:
    static ExecVcpu& of(SchedVcpu& v) { return *static_cast<ExecVcpu*>(v.owner); }
    PcpuExecutor& x_;
    const uint32_t p_;
    Pcpu& pc_;
    timer_t timer_;
    const std::function<void()> safe_point_;
  };

  void pcpu_loop(uint32_t p) {
    Pcpu& pc = *pcpus_[p];
    if (host_cpu_[p] >= 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(host_cpu_[p], &one);
      pthread_setaffinity_np(pthread_self(), sizeof one, &one);
    }
    pc.kicker.bind_current_thread();
    threads_of_->register_current(p);
    timer_t timer = make_timer();
    KvmEnv env(*this, p, timer);
    PcpuSequence seq(p, uint32_t(pcpus_.size()), *sched_, env, cc_, start_ns_, vcpus_.size());
    while (!stopping_.load(std::memory_order_relaxed)) seq.turn();
    seq.end();
    pc.busy_ns = seq.busy_ns();
    pc.sched_ns = seq.sched_ns();
    timer_delete(timer);
  }

  PcpuOptions opt_;
  std::vector<int> host_cpu_;
  std::vector<std::unique_ptr<Pcpu>> pcpus_;
  std::unique_ptr<CreditScheduler> sched_;
  std::vector<std::unique_ptr<ExecVcpu>> vcpus_;
  std::map<uint32_t, std::vector<ExecVcpu*>> by_vm_;
  std::map<uint32_t, std::unique_ptr<P2m>> p2m_;  // by VM index; built before the threads
  std::unique_ptr<ContextThreads> threads_of_;
  std::vector<mm::SoftTlb> tlbs_;  // per pCPU
  CrossCall* cc_ = nullptr;        // by VM index: reports come out in order
  std::vector<std::thread> threads_;
  std::thread accounting_;  // accounting_loop(); none under rr
  std::mutex acct_mu_;
  std::condition_variable acct_cv_;
  bool acct_due_ = false;       // under acct_mu_
  uint64_t accounting_ns_ = 0;  // accounting thread only; read after stop()
  std::atomic<size_t> live_{0};
  std::atomic<bool> stopping_{false}, stopped_{false};
  uint64_t start_ns_ = 0, end_ns_ = 0;
};

}  // namespace

std::vector<int> bound_host_cpus(uint32_t npcpus) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  sched_getaffinity(0, sizeof allowed, &allowed);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.empty()) cpus.push_back(0);
  std::vector<int> out(npcpus);
  for (uint32_t p = 0; p < npcpus; p++) out[p] = cpus[p % cpus.size()];
  return out;
}

int node_of_host_cpu(int cpu) {
  return numa_available() >= 0 ? std::max(0, numa_node_of_cpu(cpu)) : 0;
}

std::unique_ptr<Executor> make_pcpu_executor(std::vector<vmm::Vm*> vms, const PcpuOptions& opt,
                                             locks::LockRegistry& locks) {
  return std::make_unique<PcpuExecutor>(std::move(vms), opt, locks);
}

}  // namespace kvmscale::sched
