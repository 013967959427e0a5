#include "sched/cross_call.hpp"

#include <sched.h>

#include <algorithm>

#include "locks/common.hpp"
#include "locks/probe.hpp"

namespace kvmscale::sched {

using locks::AnyLock;

const char* call_lock_mode_name(CallLockMode m) {
  return m == CallLockMode::Global ? "global" : "percpu";
}

bool parse_call_lock_mode(const std::string& s, CallLockMode& out) {
  if (s == "global")
    out = CallLockMode::Global;
  else if (s == "percpu")
    out = CallLockMode::PerCpu;
  else
    return false;
  return true;
}

// One cross-call. Each target's state goes 0 (pending) -> 1 (ran) or 2 (excused while stalled);
// `remaining` drops once per target, whichever happens first. Targets are numbered by their place
// in the call's list, so a call costs its targets, not every context (10,000 vCPU threads under
// `--sched host`).
struct CrossCall::Call {
  Call(Fn f, uint32_t targets) : fn(std::move(f)), state(targets) {}
  Fn fn;
  std::vector<std::atomic<uint8_t>> state;
  std::atomic<uint32_t> remaining{0};
  void settle(uint32_t t, uint8_t how) {
    uint8_t pending = 0;
    if (state[t].compare_exchange_strong(pending, how, std::memory_order_acq_rel))
      remaining.fetch_sub(1, std::memory_order_release);
  }
};

CrossCall::CrossCall(uint32_t npcpus, CallLockMode mode, locks::LockRegistry& locks,
                     std::function<void(uint32_t)> kick)
    : mode_(mode), kick_(std::move(kick)), initiators_(std::make_unique<Initiator[]>(npcpus + 1)) {
  for (uint32_t p = 0; p < npcpus; p++) {
    slots_.push_back(std::make_unique<Slot>());
    if (mode == CallLockMode::PerCpu)
      slots_.back()->lock = locks.make("call", "call[" + std::to_string(p) + "]");
  }
  if (mode == CallLockMode::Global) global_lock_ = locks.make("call", "call_lock");
}

CrossCall::~CrossCall() = default;

thread_local const CrossCall* CrossCall::serving_cc_ = nullptr;
thread_local int CrossCall::serving_for_ = -1;

CrossCall::ServingFault::ServingFault(CrossCall& cc, int c)
    : cc_(cc), c_(c), outer_cc_(serving_cc_), outer_c_(serving_for_) {
  if (c_ >= 0) cc_.set_stalled(uint32_t(c_), true);
  serving_cc_ = &cc_;
  serving_for_ = c_;
}

CrossCall::ServingFault::~ServingFault() {
  serving_cc_ = outer_cc_;
  serving_for_ = outer_c_;
  if (c_ >= 0) cc_.set_stalled(uint32_t(c_), false);
}

// Post versus stall (a store-load pair on each side, Dekker's pattern): the initiator posts
// (stores has_pending) and later loads `stalled` to excuse the target; a target leaving a stall
// stores `stalled` and then loads has_pending at its next safe point before it uses a
// translation. Sequential consistency on all four guarantees at least one side sees the other:
// the initiator waits for the target, or the target runs the call. With only acquire/release
// both loads could read the old values (the excused target would then use a translation the
// flush was meant to remove); x86's locked RMW happens to be a full fence, other CPUs differ.
void CrossCall::post(uint32_t t, const std::shared_ptr<Call>& c, uint32_t target) {
  Slot& s = *slots_[t];
  {
    std::lock_guard g(s.mu);
    s.pending.push_back({c, target});
  }
  s.has_pending.store(true, std::memory_order_seq_cst);
}

void CrossCall::serve(uint32_t p) {
  Slot& s = *slots_[p];
  if (!s.has_pending.load(std::memory_order_seq_cst)) return;
  std::vector<Posted> calls;
  {
    std::lock_guard g(s.mu);
    calls.swap(s.pending);
    s.has_pending.store(false, std::memory_order_relaxed);
  }
  for (auto& c : calls) {
    c.call->fn(p);
    c.call->settle(c.target, 1);
    KS_PROBE(xcall_ack, p, 0);
  }
}

void CrossCall::set_stalled(uint32_t p, bool stalled, Stall why) {
  std::atomic<uint32_t>& s = slots_[p]->stalled;
  if (why == kInFault)
    s.fetch_add(stalled ? kFaultUnit : -kFaultUnit, std::memory_order_seq_cst);
  else if (stalled)
    s.fetch_or(why, std::memory_order_seq_cst);
  else
    s.fetch_and(~uint32_t(why), std::memory_order_seq_cst);
}

void CrossCall::set_in_guest(uint32_t p, bool in) {
  std::atomic<uint32_t>& s = slots_[p]->stalled;
  if (in)
    s.fetch_or(kInGuest, std::memory_order_seq_cst);
  else if (s.load(std::memory_order_relaxed) & kInGuest)  // only p's thread changes the bit
    s.fetch_and(~kInGuest, std::memory_order_seq_cst);
}

void CrossCall::on_selected_cpus(const CpuSet& targets, const Fn& fn, int self, int initiator) {
  std::vector<uint32_t> list = targets.members();  // ascending: the per-CPU lock order
  if (list.empty()) return;
  if (initiator == -2) initiator = self >= 0 || serving_cc_ != this ? self : serving_for_;
  Initiator& who =
      initiators_[initiator >= 0 && uint32_t(initiator) < npcpus() ? initiator : npcpus()];
  const uint32_t now_in = inflight_.fetch_add(1, std::memory_order_relaxed) + 1;
  locks::raise_to_max(inflight_max_, now_in);
  const uint64_t started = locks::lock_clock_ns();
  auto poll = [&] {
    if (self >= 0) serve(uint32_t(self));
  };
  // Take the call lock(s).
  AnyLock::Node global_node;
  std::vector<std::unique_ptr<AnyLock::Node>> nodes;
  if (mode_ == CallLockMode::Global) {
    global_lock_->lock(global_node, poll);
  } else {
    for (uint32_t t : list) {
      nodes.push_back(std::make_unique<AnyLock::Node>());
      slots_[t]->lock->lock(*nodes.back(), poll);
    }
  }
  const uint64_t locked = locks::lock_clock_ns();
  KS_PROBE(xcall_send, initiator, uint32_t(list.size()), locked - started);
  auto call = std::make_shared<Call>(fn, uint32_t(list.size()));
  call->remaining.store(uint32_t(list.size()));
  uint64_t t0 = locks::lock_clock_ns();
  int self_at = -1;  // self's place in the list
  // The context whose fault this thread serves is, in Xen, the initiator itself, which runs the
  // function locally (on_selected_cpus, xen/common/smp.c): it is not kicked. Blocked in its fault
  // in guest mode, it is excused below and runs the function at its next safe point, before any
  // use of a translation; back in VMM code already, it acks there.
  const int served = serving_cc_ == this ? serving_for_ : -1;
  for (uint32_t i = 0; i < list.size(); i++) {
    const uint32_t t = list[i];
    if (int(t) == self) {
      self_at = int(i);
      continue;
    }
    post(t, call, i);
    if (int(t) == served) continue;
    kick_(t);
    kicks_.fetch_add(1, std::memory_order_relaxed);
  }
  if (self_at >= 0) {
    fn(uint32_t(self));
    call->settle(uint32_t(self_at), 1);
    KS_PROBE(xcall_ack, uint32_t(self), 0);
  }
  // Wait for every ack, serving our own mailbox and excusing targets that are stalled. Spin a
  // little, then yield: on a host with fewer cores than busy threads the target may need ours.
  for (uint32_t spins = 0; call->remaining.load(std::memory_order_acquire) > 0; spins++) {
    if (spins >= 64) sched_yield();
    poll();
    for (uint32_t i = 0; i < list.size(); i++) {
      const uint32_t t = list[i];
      if (excused_by(slots_[t]->stalled.load(std::memory_order_seq_cst)) &&
          call->state[i].load(std::memory_order_acquire) == 0) {
        uint8_t before = 0;
        if (call->state[i].compare_exchange_strong(before, 2, std::memory_order_acq_rel)) {
          call->remaining.fetch_sub(1, std::memory_order_release);
          excused_.fetch_add(1, std::memory_order_relaxed);
          KS_PROBE(xcall_ack, t, 1);
        }
      }
    }
    who.wait_passes.fetch_add(1, std::memory_order_release);
    locks::cpu_relax();
  }
  uint64_t lat = locks::lock_clock_ns() - t0;
  KS_PROBE(xcall_done, initiator, uint32_t(list.size()), lat);
  if (mode_ == CallLockMode::Global) {
    global_lock_->unlock(global_node);
  } else {
    for (size_t i = list.size(); i-- > 0;) slots_[list[i]]->lock->unlock(*nodes[i]);
  }
  inflight_.fetch_sub(1, std::memory_order_relaxed);
  who.calls.fetch_add(1, std::memory_order_relaxed);
  who.lock_wait_ns.fetch_add(locked - started, std::memory_order_relaxed);
  who.busy_ns.fetch_add(locks::lock_clock_ns() - started, std::memory_order_relaxed);
  calls_.fetch_add(1, std::memory_order_relaxed);
  targets_.fetch_add(list.size(), std::memory_order_relaxed);
  locks::raise_to_max(targets_max_, uint64_t(list.size()));
  latency_ns_.fetch_add(lat, std::memory_order_relaxed);
  locks::raise_to_max(latency_max_ns_, lat);
  latency_hist_[locks::LockStats::bucket(lat)].fetch_add(1, std::memory_order_relaxed);
}

uint64_t CrossCall::wait_passes() const {
  uint64_t n = 0;
  for (uint32_t i = 0; i <= npcpus(); i++)
    n += initiators_[i].wait_passes.load(std::memory_order_acquire);
  return n;
}

nlohmann::json CrossCall::report() const {
  std::vector<uint64_t> hist;
  for (const auto& h : latency_hist_) hist.push_back(h.load());
  while (!hist.empty() && hist.back() == 0) hist.pop_back();
  nlohmann::json inits = nlohmann::json::array();
  for (uint32_t c = 0; c <= npcpus(); c++) {
    const Initiator& i = initiators_[c];
    if (i.calls.load() == 0) continue;
    inits.push_back({{"context", c < npcpus() ? nlohmann::json(c) : nlohmann::json(nullptr)},
                     {"calls", i.calls.load()},
                     {"call_lock_wait_ns", i.lock_wait_ns.load()},
                     {"initiator_ns", i.busy_ns.load()}});
  }
  return {{"mode", call_lock_mode_name(mode_)},
          {"initiators_max_concurrent", inflight_max_.load()},
          {"initiators", inits},
          {"calls", calls_.load()},
          {"targets", targets_.load()},
          {"targets_mean", calls_.load() ? double(targets_.load()) / double(calls_.load()) : 0.0},
          {"targets_max", targets_max_.load()},
          {"kicks", kicks_.load()},
          {"acks_excused_stalled", excused_.load()},
          {"latency_ns_total", latency_ns_.load()},
          {"latency_ns_max", latency_max_ns_.load()},
          {"latency_hist_log2_ns", hist}};
}

}  // namespace kvmscale::sched
