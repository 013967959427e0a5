// on_selected_cpus(): run a function on a set of pCPUs and wait for them, as Xen's
// xen/common/smp.c does for EPT flushes. Targets in guest mode are kicked out of KVM_RUN and run
// the function at their next safe point (before they handle the exit, or while idle).
//
// Call-lock modes (--call-lock):
//   global  one call lock (class "call") serialises every cross-call, as Xen;
//   percpu  the study's proposal: lock only the targets' per-pCPU call locks, in ascending order.
// While an initiator waits for a lock or for acks it keeps serving calls aimed at itself (as a
// Xen CPU spinning with interrupts enabled still answers IPIs), so two pCPUs calling each other
// cannot deadlock.
//
// Stalls: a pCPU blocked where it cannot serve (idle, gone, or in guest mode in a userfaultfd
// fault wait) is excused: the initiator counts it as acked and stops waiting for it, and it runs
// the function at its next safe point, before it can use a translation again. The initiator
// re-checks stalls while it waits, so a target that stalls after the kick is noticed too. Hence
// `fn` is copied and may run after on_selected_cpus() returned: it must not refer to the caller's
// stack.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <vector>

#include "locks/registry.hpp"
#include "sched/cpuset.hpp"

namespace kvmscale::sched {

enum class CallLockMode { Global, PerCpu };
const char* call_lock_mode_name(CallLockMode m);
bool parse_call_lock_mode(const std::string& s, CallLockMode& out);

class CrossCall {
 public:
  using Fn = std::function<void(uint32_t pcpu)>;
  CrossCall(uint32_t npcpus, CallLockMode mode, locks::LockRegistry& locks,
            std::function<void(uint32_t pcpu)> kick);
  ~CrossCall();

  // Runs fn(t) on every t in targets. `self` is the calling pCPU, or -1 for other threads.
  // `initiator` is the context the per-initiator counters charge; default: self, or, on a thread
  // serving a fault (ServingFault), the faulting context (a fault thread acts for it).
  void on_selected_cpus(const CpuSet& targets, const Fn& fn, int self, int initiator = -2);
  // pCPU p at a safe point: runs every call aimed at it. Cheap when there is none.
  void serve(uint32_t p);
  // Why a context cannot serve calls. Independent reasons, so that e.g. the fault service
  // clearing "in a fault" cannot undo "gone" set by the exiting thread. kInFault is a count, not
  // a bit: several fault threads may serve faults of one context at once (a retried fault after
  // a kick), and the first to finish must not end the stall the others still serve.
  enum Stall : uint8_t { kInFault = 1, kIdle = 2, kGone = 4 };
  // p entered / left a state in which it cannot serve calls (and uses no translation). For
  // kInFault each `true` must be matched by one `false`.
  void set_stalled(uint32_t p, bool stalled, Stall why = kInFault);
  // Context p is about to enter guest mode (KVM_RUN) / is back in VMM code, where it may use a
  // translation. A fault stall (kInFault) excuses p only while p is in guest mode: the fault
  // thread keeps it for the whole of PodVm::handle, but the zero page that resolves the fault,
  // a kick or a duplicate fault event let p run VMM code before then, and an ack excused there
  // would let the flush complete while p still uses what it removed. Leaving guest mode must
  // come before the serve() of p's next safe point (safe_point() does both, in that order):
  // then either the initiator sees p out of guest mode and waits for its ack, or p's serve sees
  // the call (the same Dekker pair as post versus stall).
  void set_in_guest(uint32_t p, bool in);
  // A context's safe point: out of guest mode, then serve.
  void safe_point(uint32_t p) {
    set_in_guest(p, false);
    serve(p);
  }

  // The calling thread serves a fault of context c while this lives (a fault thread acting for
  // the faulting pCPU, which in Xen serves its own fault): c counts as stalled (kInFault) and
  // cross-calls this thread initiates are c's. c < 0: the fault is no context's (nothing stalls).
  class ServingFault {
   public:
    ServingFault(CrossCall& cc, int c);
    ~ServingFault();
    ServingFault(const ServingFault&) = delete;
    ServingFault& operator=(const ServingFault&) = delete;

   private:
    CrossCall& cc_;
    int c_;
    const CrossCall* outer_cc_;
    int outer_c_;
  };

  uint32_t npcpus() const { return uint32_t(slots_.size()); }
  CallLockMode mode() const { return mode_; }
  // calls, targets (total, mean and max per call: the flush mask size), kicks, acks excused by
  // stall, latency (first kick to last ack) histogram, the most initiators seen at once and,
  // per initiating context, calls, call-lock wait and time as initiator.
  nlohmann::json report() const;
  // Passes of every initiator's ack-wait loop so far, each after its excusal check (for tests:
  // a target not excused at pass 1 was not excused then).
  uint64_t wait_passes() const;

 private:
  struct Call;
  struct Posted {
    std::shared_ptr<Call> call;
    uint32_t target;  // this slot's place in the call's target list
  };
  struct Slot {
    std::atomic<bool> has_pending{false};
    std::mutex mu;
    std::vector<Posted> pending;
    std::atomic<uint32_t> stalled{0};      // kIdle/kGone bits, plus kFaultUnit per fault in service
    std::unique_ptr<locks::AnyLock> lock;  // percpu mode
  };
  static constexpr uint32_t kInGuest = 8;  // set_in_guest(); not a stall by itself
  static constexpr uint32_t kFaultUnit = 1u << 8;
  // A target in this state acks nothing for itself: it is excused.
  static bool excused_by(uint32_t stalled) {
    return (stalled & (kIdle | kGone)) != 0 || (stalled >= kFaultUnit && (stalled & kInGuest));
  }
  // The context the calling thread serves a fault of (ServingFault), and for which cross-call.
  static thread_local const CrossCall* serving_cc_;
  static thread_local int serving_for_;
  void post(uint32_t t, const std::shared_ptr<Call>& c, uint32_t target);

  CallLockMode mode_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::unique_ptr<locks::AnyLock> global_lock_;
  std::function<void(uint32_t)> kick_;
  // Statistics (atomics: initiators run concurrently in percpu mode).
  std::atomic<uint64_t> calls_{0}, targets_{0}, targets_max_{0}, kicks_{0}, excused_{0},
      latency_ns_{0}, latency_max_ns_{0};
  std::array<std::atomic<uint64_t>, 40> latency_hist_{};
  struct Initiator {
    std::atomic<uint64_t> calls{0}, lock_wait_ns{0}, busy_ns{0};
    std::atomic<uint64_t> wait_passes{0};  // per initiator: no line shared by all of them
  };
  std::unique_ptr<Initiator[]> initiators_;  // per context, then one for "no context"
  std::atomic<uint32_t> inflight_{0}, inflight_max_{0};
};

}  // namespace kvmscale::sched
