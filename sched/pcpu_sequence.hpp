// One pCPU's sequencing, shared by both pCPU executors: the KVM one (sched/pcpu_executor.cpp: host
// threads, KVM_RUN, POSIX timers, condition-variable idle) and the simulated one
// (sched/sim_executor.cpp: Engine fibers in virtual time). What differs between them is behind
// PcpuEnv; the order of the steps (safe point, due tick and timers, schedule, idle, entry, run,
// the exit's action) is written once, here, so the two cannot drift (issue 21).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "sched/credit.hpp"
#include "sched/cross_call.hpp"
#include "sched/p2m.hpp"
#include "vmm/hypercall.hpp"

namespace kvmscale::sched {

// The earlier of two deadlines, 0 meaning none.
inline uint64_t earliest_of(uint64_t a, uint64_t b) {
  if (a == 0) return b;
  return b == 0 ? a : std::min(a, b);
}

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

// What a pCPU runs on: its clock, its guest, its timer and its idle. One per pCPU; the sequence
// calls it from that pCPU's thread (or fiber) only. vCPUs are the scheduler's (SchedVcpu); the
// environment knows what each one's `owner` is.
class PcpuEnv {
 public:
  virtual ~PcpuEnv() = default;
  virtual uint64_t now() = 0;
  // Sleeps until tickled or `until` (0: until tickled).
  virtual void idle_until(uint64_t until) = 0;
  // The next run_guest() must return by `at` (the pCPU's preemption timer). Called only when the
  // deadline changed.
  virtual void arm_timer(uint64_t at) = 0;
  // pCPU 0's tick found an accounting pass due (CreditParams::account_on_tick is false): run it
  // elsewhere (merged with one already asked for).
  virtual void request_accounting() = 0;
  // Runs v in guest mode until its next exit (the armed timer, a kick or the guest's own exit).
  virtual vmm::Action run_guest(SchedVcpu& v) = 0;
  // The VM of v has stopped (crashed or stopped from outside).
  virtual bool vm_stopped(SchedVcpu& v) = 0;
  // Sets v's pending hypercall's result (a block's).
  virtual void set_hcall_result(SchedVcpu& v, uint64_t result) = 0;
  // v stops for good (CreditScheduler::finish and the executor's count of live vCPUs).
  virtual void finish(SchedVcpu& v, uint64_t now) = 0;
  // The vCPU that v's Wake names (its VM's vCPU `index`).
  virtual SchedVcpu& wake_target(SchedVcpu& v, uint64_t index) = 0;
  // v exited with `code` / its guest crashed it: record it and finish what stops.
  virtual void exited(SchedVcpu& v, int64_t code, uint64_t now) = 0;
  virtual void crashed(SchedVcpu& v, const std::string& reason, uint64_t now) = 0;
  // v's newest timed block generation (BlockTimers' `latest`).
  virtual std::atomic<uint64_t>& timer_gen(SchedVcpu& v) = 0;
  // v's VM's p2m view, entered before v runs; null: none (no translations to keep).
  virtual P2m* p2m(SchedVcpu& v) = 0;
  // The CPU a step costs beyond what now() shows. A real pCPU spends it while the step runs
  // (nothing to add); a simulated one advances its virtual time here.
  enum class Step { Timers, Schedule };
  virtual void spend(Step) {}
};

// The pCPU loop's steps. The executor's loop is `while (!stopping) seq.turn(); seq.end();`.
class PcpuSequence {
 public:
  // start_ns: the scheduler's start; ticks are staggered from it so pCPUs do not all account at
  // once. cc: the run's cross-calls, or null. nvcpus: the run's vCPUs (sizes the block timers).
  PcpuSequence(uint32_t p, uint32_t npcpus, CreditScheduler& s, PcpuEnv& env, CrossCall* cc,
               uint64_t start_ns, size_t nvcpus);

  // One turn of the loop: a safe point, the due tick and timers, schedule if needed, then idle
  // until an event or run the chosen vCPU once and apply its exit's action.
  void turn();
  // The run is over: leave nothing marked Running, never wait for this pCPU again.
  void end();

  uint64_t busy_ns() const { return busy_ns_; }    // in run_guest()
  uint64_t sched_ns() const { return sched_ns_; }  // in tick(), schedule() (with balancing), timers
  SchedVcpu* current() const { return cur_; }

 private:
  uint64_t safe_point();          // serves cross-calls; returns now
  uint64_t due(uint64_t now);     // the tick and block timeouts due at `now`; returns now
  void reschedule(uint64_t now);  // schedule() when the slice ended or a resched is asked
  void idle();                    // nothing to run: sleep until tickled or the next timer
  vmm::Action run(SchedVcpu& v, uint64_t& t1);  // entry, the guest, its exit (at t1)
  void apply(SchedVcpu& v, const vmm::Action& a, uint64_t t1);  // the exit's action

  const uint32_t p_;
  CreditScheduler& sched_;
  PcpuEnv& env_;
  CrossCall* cc_;
  const uint64_t tick_;
  uint64_t next_tick_;
  uint64_t armed_ = 0, deadline_ = 0;
  SchedVcpu* cur_ = nullptr;
  P2m* held_ = nullptr;  // the VM whose translations this pCPU holds (its dirty mask)
  BlockTimers timers_;
  uint64_t busy_ns_ = 0, sched_ns_ = 0;
};

}  // namespace kvmscale::sched
