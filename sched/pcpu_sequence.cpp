#include "sched/pcpu_sequence.hpp"

#include "sched/wake_slot.hpp"

namespace kvmscale::sched {

PcpuSequence::PcpuSequence(uint32_t p, uint32_t npcpus, CreditScheduler& s, PcpuEnv& env,
                           CrossCall* cc, uint64_t start_ns, size_t nvcpus)
    : p_(p),
      sched_(s),
      env_(env),
      cc_(cc),
      tick_(s.params().tick_ns),
      // Stagger ticks so pCPUs do not all account at once.
      next_tick_(start_ns + tick_ * (p + 1) / npcpus) {
  timers_.set_live_limit(nvcpus);
}

void PcpuSequence::turn() {
  uint64_t now = safe_point();
  now = due(now);
  reschedule(now);
  if (!cur_) {
    idle();
    return;
  }
  SchedVcpu& v = *cur_;
  if (env_.vm_stopped(v)) {
    env_.finish(v, now);
    return;
  }
  if (v.block_result_due) {
    env_.set_hcall_result(v, v.block_result);
    v.block_result_due = false;
  }
  uint64_t t1 = 0;
  const vmm::Action a = run(v, t1);
  apply(v, a, t1);
}

uint64_t PcpuSequence::safe_point() {
  if (cc_) cc_->serve(p_);  // a safe point: answer flushes before anything else
  return env_.now();
}

uint64_t PcpuSequence::due(uint64_t now) {
  if (now >= next_tick_ || (timers_.earliest() && now >= timers_.earliest())) {
    if (now >= next_tick_) {
      if (sched_.tick(p_, now)) env_.request_accounting();
      while (next_tick_ <= now) next_tick_ += tick_;
    }
    timers_.fire(sched_, now);
    env_.spend(PcpuEnv::Step::Timers);
    uint64_t after = env_.now();
    sched_ns_ += after - now;
    now = after;
  }
  return now;
}

void PcpuSequence::reschedule(uint64_t now) {
  if (!cur_ || now >= deadline_ || sched_.need_resched(p_)) {
    auto d = sched_.schedule(p_, now);
    cur_ = d.next;
    deadline_ = d.until_ns;
    env_.spend(PcpuEnv::Step::Schedule);
    sched_ns_ += env_.now() - now;
  }
}

void PcpuSequence::idle() {
  // Only pCPU 0 keeps ticking while idle (Xen ticks idle pCPUs too; one keeps the tick counts
  // comparable across runs). An idle pCPU uses no translation: flushes need not wait for it (it
  // serves them when it wakes).
  if (cc_) cc_->set_stalled(p_, true, CrossCall::kIdle);
  env_.idle_until(earliest_of(p_ == 0 ? next_tick_ : 0, timers_.earliest()));
  if (cc_) cc_->set_stalled(p_, false, CrossCall::kIdle);
}

vmm::Action PcpuSequence::run(SchedVcpu& v, uint64_t& t1) {
  uint64_t wake_at = earliest_of(std::min(deadline_, next_tick_), timers_.earliest());
  if (wake_at != armed_) {
    env_.arm_timer(wake_at);
    armed_ = wake_at;
  }
  if (P2m* m = env_.p2m(v)) P2m::enter(p_, held_, *m);  // switches dirty masks, honours marks
  uint64_t t0 = env_.now();
  if (cc_) cc_->set_in_guest(p_, true);  // until the exit handler's first safe point
  vmm::Action a = env_.run_guest(v);
  if (cc_) cc_->safe_point(p_);
  t1 = env_.now();
  busy_ns_ += t1 - t0;
  return a;
}

void PcpuSequence::apply(SchedVcpu& v, const vmm::Action& a, uint64_t t1) {
  using K = vmm::Action::Kind;
  switch (a.kind) {
    case K::Resume:
    case K::Kicked: break;
    case K::Yield: sched_.yield(p_, v); break;
    case K::Block:
      if (sched_.block(p_, v, t1)) {
        if (block_has_timeout(a.value))
          timers_.add(t1 + a.value, &v, v.block_gen, env_.timer_gen(v));
      } else {
        env_.set_hcall_result(v, 0);  // a wake was already pending
      }
      break;
    case K::Wake: sched_.wake(env_.wake_target(v, a.value), t1); break;
    case K::Exit: env_.exited(v, int64_t(a.value), t1); break;
    case K::Crash: env_.crashed(v, a.reason, t1); break;
  }
}

void PcpuSequence::end() {
  if (cur_) sched_.finish(*cur_, env_.now());  // the run is over: leave nothing marked Running
  if (cc_) cc_->set_stalled(p_, true, CrossCall::kGone);  // never wait for it again
}

}  // namespace kvmscale::sched
