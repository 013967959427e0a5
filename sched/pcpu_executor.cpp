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
// blocked (BlockTimers), as Xen's timers are per CPU: on the hot path only pCPU threads take
// run-queue locks.
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
#include "sched/wake_slot.hpp"
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

// Block timeouts of the vCPUs that blocked on one pCPU, kept by that pCPU as Xen keeps timers
// per CPU (do_poll arms v->poll_timer on the vCPU's processor, xen/common/schedule.c; Xen moves it
// on migration, ours need not: a blocked vCPU is never stolen). Only the pCPU's own thread touches
// them, so firing one takes no lock but the run queue's (in wake()). An entry goes stale when its
// vCPU blocks again (a newer generation); stale entries are dropped when they come due or when they
// outnumber the live ones.
class BlockTimers {
 public:
  void add(uint64_t deadline, SchedVcpu* v, uint64_t gen, std::atomic<uint64_t>& latest) {
    latest.store(gen, std::memory_order_relaxed);
    heap_.push_back({deadline, v, gen, &latest});
    std::push_heap(heap_.begin(), heap_.end(), Later{});
    if (heap_.size() > 2 * live_limit_) compact();
  }
  uint64_t earliest() const { return heap_.empty() ? 0 : heap_.front().deadline; }
  // Wakes (timed out) every vCPU whose deadline has passed.
  void fire(CreditScheduler& s, uint64_t now) {
    while (!heap_.empty() && heap_.front().deadline <= now) {
      std::pop_heap(heap_.begin(), heap_.end(), Later{});
      Entry e = heap_.back();
      heap_.pop_back();
      if (e.latest->load(std::memory_order_relaxed) == e.gen) s.wake(*e.v, now, true, e.gen);
    }
  }
  void set_live_limit(size_t n) { live_limit_ = std::max<size_t>(n, 32); }

 private:
  struct Entry {
    uint64_t deadline;
    SchedVcpu* v;
    uint64_t gen;
    std::atomic<uint64_t>* latest;  // the vCPU's newest timed block
  };
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const { return a.deadline > b.deadline; }
  };
  void compact() {
    std::erase_if(
        heap_, [](const Entry& e) { return e.latest->load(std::memory_order_relaxed) != e.gen; });
    std::make_heap(heap_.begin(), heap_.end(), Later{});
  }
  std::vector<Entry> heap_;
  size_t live_limit_ = 32;
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
    for (auto& pc : pcpus_) pc->timers.set_live_limit(vcpus_.size());
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
    uint64_t busy_ns = 0;   // inside KVM_RUN; own thread only
    uint64_t sched_ns = 0;  // in tick(), schedule() (with balancing), timers
    BlockTimers timers;     // own thread only
  };

  void finish(ExecVcpu& ev, uint64_t now) {
    sched_->finish(*ev.sv, now);
    if (!ev.finished.exchange(true)) live_.fetch_sub(1);
  }

  void crash_vm(const vmm::Vm* vm, uint64_t now) {
    for (ExecVcpu* ev : by_vm_.at(vm->index())) finish(*ev, now);
  }

  // The earlier of two deadlines, 0 meaning none.
  static uint64_t earliest_of(uint64_t a, uint64_t b) {
    if (a == 0) return b;
    return b == 0 ? a : std::min(a, b);
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
    const uint64_t tick = sched_->params().tick_ns;
    // Stagger ticks so pCPUs do not all account at once.
    uint64_t next_tick = start_ns_ + tick * (p + 1) / pcpus_.size();
    uint64_t armed = 0, deadline = 0;
    SchedVcpu* cur = nullptr;
    P2m* held = nullptr;  // the VM whose translations this pCPU holds (its dirty mask)
    const std::function<void()> safe_point = [this, p] {
      if (cc_) cc_->safe_point(p);
    };
    while (!stopping_.load(std::memory_order_relaxed)) {
      if (cc_) cc_->serve(p);  // a safe point: answer flushes before anything else
      uint64_t now = now_ns();
      if (now >= next_tick || (pc.timers.earliest() && now >= pc.timers.earliest())) {
        if (now >= next_tick) {
          if (sched_->tick(p, now)) request_accounting();
          while (next_tick <= now) next_tick += tick;
        }
        pc.timers.fire(*sched_, now);
        uint64_t after = now_ns();
        pc.sched_ns += after - now;
        now = after;
      }
      if (!cur || now >= deadline || sched_->need_resched(p)) {
        auto d = sched_->schedule(p, now);
        cur = d.next;
        deadline = d.until_ns;
        pc.sched_ns += now_ns() - now;
      }
      if (!cur) {
        // Only pCPU 0 keeps ticking while idle (Xen ticks idle pCPUs too; one keeps the tick
        // counts comparable across runs). An idle pCPU uses no translation: flushes need not
        // wait for it (it serves them when it wakes).
        if (cc_) cc_->set_stalled(p, true, CrossCall::kIdle);
        idle_wait(pc, earliest_of(p == 0 ? next_tick : 0, pc.timers.earliest()));
        if (cc_) cc_->set_stalled(p, false, CrossCall::kIdle);
        continue;
      }
      auto& ev = *static_cast<ExecVcpu*>(cur->owner);
      if (ev.vm->stopped()) {
        finish(ev, now);
        continue;
      }
      if (cur->block_result_due) {
        ev.vcpu->set_hcall_result(cur->block_result);
        cur->block_result_due = false;
      }
      uint64_t wake_at = earliest_of(std::min(deadline, next_tick), pc.timers.earliest());
      if (wake_at != armed) {
        itimerspec its{};
        its.it_value.tv_sec = time_t(wake_at / 1000000000ull);
        its.it_value.tv_nsec = long(wake_at % 1000000000ull);
        timer_settime(timer, TIMER_ABSTIME, &its, nullptr);
        armed = wake_at;
      }
      P2m::enter(p, held, *ev.p2m);  // switches dirty masks, honours invalidate marks
      uint64_t t0 = now_ns();
      if (cc_) cc_->set_in_guest(p, true);  // until the exit handler's first safe point
      vmm::Action a =
          ev.vm->run_once(*ev.vcpu, pc.kicker, {&tlbs_[p], &safe_point, ev.p2m->exit_view()});
      if (cc_) cc_->safe_point(p);
      uint64_t t1 = now_ns();
      pc.busy_ns += t1 - t0;
      using K = vmm::Action::Kind;
      switch (a.kind) {
        case K::Resume:
        case K::Kicked: break;
        case K::Yield: sched_->yield(p, *cur); break;
        case K::Block:
          if (sched_->block(p, *cur, t1)) {
            if (block_has_timeout(a.value))
              pc.timers.add(t1 + a.value, cur, cur->block_gen, ev.timer_gen);
          } else {
            ev.vcpu->set_hcall_result(0);  // a wake was already pending
          }
          break;
        case K::Wake: sched_->wake(*by_vm_.at(ev.vm->index())[a.value]->sv, t1); break;
        case K::Exit:
          ev.vm->vcpu_exited(*ev.vcpu, int64_t(a.value));
          finish(ev, t1);
          break;
        case K::Crash:
          if (ev.vm->crash(a.reason))
            crash_vm(ev.vm, t1);
          else
            finish(ev, t1);
          break;
      }
    }
    if (cur) sched_->finish(*cur, now_ns());  // the run is over: leave nothing marked Running
    if (cc_) cc_->set_stalled(p, true, CrossCall::kGone);  // never wait for it again
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
