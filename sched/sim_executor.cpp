#include "sched/sim_executor.hpp"

#include <stdexcept>
#include <string>

#include "sched/pcpu_sequence.hpp"

namespace kvmscale::sched {

nlohmann::json SimCosts::to_json() const {
  return {{"exit_ns", exit_ns},        {"schedule_ns", schedule_ns},
          {"timers_ns", timers_ns},    {"account_ns", account_ns},
          {"kick_ns", kick_ns},        {"timer_jitter_ns", timer_jitter_ns},
          {"line_ns", locks.line_ns},  {"futex_wake_ns", locks.futex_wake_ns},
          {"yield_ns", locks.yield_ns}};
}

namespace {

struct SimVcpu {
  const SimVm* vm;
  uint32_t vm_index, index;  // its VM, and its index there
  SchedVcpu* sv = nullptr;
  std::atomic<uint64_t> timer_gen{0};
  bool finished = false;
  bool woke_partner = false;  // pingpong: the last exit woke the partner, the next one blocks
  int running_on = -1;        // the pCPU inside run_guest() with it, or -1
};

}  // namespace

struct SimExecutor::Impl final : PcpuSignals {
  // One simulated pCPU: its fiber's environment for PcpuSequence.
  struct Pcpu final : PcpuEnv {
    Pcpu(Impl& x, uint32_t p) : x(x), p(p), wq(x.engine) {}
    Impl& x;
    const uint32_t p;
    sim::WaitQueue wq;      // this pCPU's fiber, while idle or in guest mode
    bool waiting = false;   // its fiber is in wq
    uint64_t wait_gen = 0;  // tells a stale deadline event from the current one
    bool tickled = false;   // idle: wake up
    bool kicked = false;    // guest mode: exit now (a kick before entry exits at once, as KVM's)
    uint64_t timer_at = 0;  // armed preemption timer, jitter included
    std::unique_ptr<PcpuSequence> seq;

    // Suspends the fiber until `flag` is set by a tickle or virtual time reaches `until`
    // (0: no deadline).
    void wait(const bool& flag, uint64_t until) {
      if (flag || x.stopping) return;
      if (until != 0 && until <= x.engine.now()) return;
      const uint64_t gen = ++wait_gen;
      waiting = true;
      if (until != 0)
        x.engine.call_at(until, [this, gen] {
          if (waiting && wait_gen == gen) {
            waiting = false;
            wq.wake_one();
          }
        });
      wq.wait();
    }

    uint64_t now() override { return x.engine.now(); }
    void idle_until(uint64_t until) override {
      wait(tickled, until);
      tickled = false;
    }
    void arm_timer(uint64_t at) override {
      const uint64_t j = x.opt.costs.timer_jitter_ns;
      timer_at = at + (j ? x.engine.rng()() % j : 0);
    }
    void request_accounting() override {
      x.acct_due = true;
      x.acct_wq.wake_one();
    }
    vmm::Action run_guest(SchedVcpu& v) override {
      SimVcpu& sv = of(v);
      if (sv.running_on >= 0) x.double_runs++;  // the invariant the tests check
      sv.running_on = int(p);
      vmm::Action a = guest(sv);
      sv.running_on = -1;
      return a;
    }
    vmm::Action guest(SimVcpu& sv) {
      using K = vmm::Action::Kind;
      const sim::Time exit = x.opt.costs.exit_ns;
      switch (sv.vm->model) {
        case GuestModel::Spin:
          wait(kicked, timer_at);
          kicked = false;
          x.engine.advance(exit);
          return {K::Kicked};
        case GuestModel::Idle: x.engine.advance(exit); return {K::Block, sv.vm->block_ns};
        case GuestModel::Pingpong:
          x.engine.advance(x.engine.rng()() % (sv.vm->work_ns + 1) + exit);
          sv.woke_partner = !sv.woke_partner;
          if (sv.woke_partner) return {K::Wake, (sv.index ^ 1u) % sv.vm->vcpus};
          return {K::Block, 0};
      }
      return {K::Resume};
    }
    bool vm_stopped(SchedVcpu&) override { return false; }
    void set_hcall_result(SchedVcpu&, uint64_t) override {}  // the models ignore it
    void finish(SchedVcpu& v, uint64_t now) override { x.finish(of(v), now); }
    SchedVcpu& wake_target(SchedVcpu& v, uint64_t index) override {
      return *x.by_vm[of(v).vm_index].at(index)->sv;
    }
    void exited(SchedVcpu& v, int64_t, uint64_t now) override { x.finish(of(v), now); }
    void crashed(SchedVcpu& v, const std::string&, uint64_t now) override {
      for (SimVcpu* o : x.by_vm[of(v).vm_index]) x.finish(*o, now);
    }
    std::atomic<uint64_t>& timer_gen(SchedVcpu& v) override { return of(v).timer_gen; }
    P2m* p2m(SchedVcpu&) override { return nullptr; }  // PoD in simulation: not yet
    void spend(Step s) override {
      x.engine.advance(s == Step::Schedule ? x.opt.costs.schedule_ns : x.opt.costs.timers_ns);
    }
    static SimVcpu& of(SchedVcpu& v) { return *static_cast<SimVcpu*>(v.owner); }
  };

  explicit Impl(const SimOptions& o)
      : opt(o),
        engine(o.seed),
        factory(engine, o.costs.locks),
        registry(o.lock_policy, &factory),
        acct_wq(engine) {
    if (opt.npcpus == 0) throw std::invalid_argument("sim: npcpus must be at least 1");
    CreditParams params = opt.params;
    params.account_on_tick = false;  // the accounting actor runs the passes, as the KVM executor
    sched = std::make_unique<CreditScheduler>(opt.npcpus, params, registry, *this);
    for (uint32_t p = 0; p < opt.npcpus; p++) pcpus.push_back(std::make_unique<Pcpu>(*this, p));
    by_vm.resize(opt.vms.size());
    uint32_t global = 0;
    for (uint32_t m = 0; m < opt.vms.size(); m++) {
      const SimVm& vm = opt.vms[m];
      SchedDomain& d = sched->add_domain(vm.weight, vm.cap);
      for (uint32_t i = 0; i < vm.vcpus; i++, global++) {
        auto v = std::make_unique<SimVcpu>();
        v->vm = &opt.vms[m];
        v->vm_index = m;
        v->index = i;
        v->woke_partner = i % 2 == 1;  // pingpong: even vCPUs serve first, odd ones wait
        CpuSet aff = opt.affinity_of ? opt.affinity_of(global) : CpuSet(opt.npcpus, true);
        v->sv = &sched->add_vcpu(d, aff, v.get());
        by_vm[m].push_back(v.get());
        vcpus.push_back(std::move(v));
      }
    }
  }
  ~Impl() override { engine.shutdown(); }  // before the locks its suspended fibers may hold

  // PcpuSignals: wake the pCPU if idle, kick it out of guest mode if running, after an IPI.
  void tickle(uint32_t p) override {
    Pcpu& pc = *pcpus[p];
    pc.tickled = pc.kicked = true;
    kicks++;
    if (pc.waiting) {
      pc.waiting = false;
      pc.wq.wake_one(opt.costs.kick_ns);
    }
  }

  void finish(SimVcpu& v, uint64_t now) {
    sched->finish(*v.sv, now);
    v.finished = true;
  }

  void accounting_loop() {
    for (;;) {
      while (!acct_due && !stopping) acct_wq.wait();
      if (stopping) return;
      acct_due = false;
      sched->account(engine.now());
      engine.advance(opt.costs.account_ns);
    }
  }

  void pcpu_loop(uint32_t p) {
    Pcpu& pc = *pcpus[p];
    pc.seq = std::make_unique<PcpuSequence>(p, opt.npcpus, *sched, pc, nullptr, 0, vcpus.size());
    while (!stopping) pc.seq->turn();
    pc.seq->end();
  }

  SimOptions opt;
  sim::Engine engine;
  sim::SimLockFactory factory;
  locks::LockRegistry registry;
  std::unique_ptr<CreditScheduler> sched;
  std::vector<std::unique_ptr<Pcpu>> pcpus;
  std::vector<std::unique_ptr<SimVcpu>> vcpus;
  std::vector<std::vector<SimVcpu*>> by_vm;
  sim::WaitQueue acct_wq;
  bool acct_due = false;
  bool stopping = false, ran = false;
  uint64_t kicks = 0, double_runs = 0;
  uint64_t end_ns = 0;
};

SimExecutor::SimExecutor(const SimOptions& opt) : impl_(std::make_unique<Impl>(opt)) {}
SimExecutor::~SimExecutor() = default;

void SimExecutor::run(uint64_t duration_ns) {
  Impl& x = *impl_;
  if (x.ran) throw std::logic_error("sim: SimExecutor::run() called twice");
  x.ran = true;
  // start() takes run-queue locks, which only an actor may take.
  x.engine.spawn("start", [&x] {
    x.sched->start(0);
    for (uint32_t p = 0; p < x.opt.npcpus; p++)
      x.engine.spawn("pCPU " + std::to_string(p), [&x, p] { x.pcpu_loop(p); });
    if (!x.opt.params.round_robin) x.engine.spawn("accounting", [&x] { x.accounting_loop(); });
  });
  x.engine.run(duration_ns);
  // Stop: every pCPU finishes its turn and leaves; nothing else wakes it.
  x.stopping = true;
  for (uint32_t p = 0; p < x.opt.npcpus; p++) x.tickle(p);
  x.acct_wq.wake_all();
  x.engine.run();
  x.end_ns = x.engine.now();
  if (x.engine.actors_alive() != 0)
    throw std::logic_error("sim: " + std::to_string(x.engine.actors_alive()) +
                           " actors did not stop");
}

nlohmann::json SimExecutor::report() const {
  const Impl& x = *impl_;
  nlohmann::json r = x.sched->report();
  for (uint32_t p = 0; p < x.opt.npcpus; p++) {
    const PcpuSequence* s = x.pcpus[p]->seq.get();
    r["pcpus"][p]["busy_ns"] = s ? s->busy_ns() : 0;
    r["pcpus"][p]["sched_ns"] = s ? s->sched_ns() : 0;
  }
  r["locks"] = x.registry.report();
  r["sim"] = {{"seed", x.opt.seed},
              {"events", x.engine.events()},
              {"switches", x.engine.switches()},
              {"virtual_ns", x.end_ns},
              {"kicks", x.kicks},
              {"double_runs", x.double_runs},
              {"costs", x.opt.costs.to_json()}};
  return r;
}

const CreditScheduler& SimExecutor::scheduler() const { return *impl_->sched; }
const sim::Engine& SimExecutor::engine() const { return impl_->engine; }
uint64_t SimExecutor::double_runs() const { return impl_->double_runs; }

}  // namespace kvmscale::sched
