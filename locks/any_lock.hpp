// AnyLock: the strategy chosen at run time (--lock), behind one non-virtual type. Dispatch is a
// switch on a constant per lock; the Node holds what any strategy needs. In a simulation the
// lock is an ExternalLock standing for the strategy (locks/external_lock.hpp): one more case of
// the same switch, and the profile and probes around it are unchanged.
#pragma once

#include <cstdint>
#include <string_view>
#include <variant>

#include "locks/clh.hpp"
#include "locks/common.hpp"
#include "locks/external_lock.hpp"
#include "locks/mcs.hpp"
#include "locks/probe.hpp"
#include "locks/profile.hpp"
#include "locks/pthread_lock.hpp"
#include "locks/spin_yield.hpp"
#include "locks/ticket.hpp"
#include "locks/ttas.hpp"

namespace kvmscale::locks {

class AnyLock {
 public:
  struct Node {
    Node() = default;
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    McsLock::Node mcs;
    ClhLock::Node clh;
    NoNode none;
    uint64_t hold_start = 0;
    bool hold_profiled = false;  // hold_start was taken for the profile's sample
  };

  // profile may be null (profiling off); it must outlive the lock, as must `cls` (the class
  // name the probes report).
  explicit AnyLock(Strategy s, LockProfile* profile = nullptr, const char* cls = "")
      : strategy_(s), profile_(profile), cls_(cls) {
    switch (s) {
      case Strategy::Ticket: impl_.emplace<TicketLock>(); break;
      case Strategy::Mcs: impl_.emplace<McsLock>(); break;
      case Strategy::Clh: impl_.emplace<ClhLock>(); break;
      case Strategy::Ttas: impl_.emplace<TtasLock>(); break;
      case Strategy::Pthread: impl_.emplace<PthreadLock>(); break;
      case Strategy::SpinYield: impl_.emplace<SpinYieldLock>(); break;
    }
  }
  // `ext` stands for strategy s (a simulated lock); not null.
  AnyLock(Strategy s, std::unique_ptr<ExternalLock> ext, LockProfile* profile = nullptr,
          const char* cls = "")
      : impl_(std::move(ext)), strategy_(s), profile_(profile), cls_(cls) {}
  AnyLock(const AnyLock&) = delete;
  AnyLock& operator=(const AnyLock&) = delete;

  Strategy strategy() const { return strategy_; }
  bool external() const { return std::holds_alternative<std::unique_ptr<ExternalLock>>(impl_); }
  LockProfile* profile() const { return profile_; }

  void lock(Node& n) { lock(n, NoPoll{}); }
  // Calls poll() while waiting (see NoPoll in common.hpp).
  template <typename Poll>
  void lock(Node& n, Poll&& poll) {
    const bool traced = KS_PROBE_ENABLED(lock_acquire) || KS_PROBE_ENABLED(lock_release);
    if (profile_ == nullptr && !traced) return raw_lock(n, poll);
    int64_t wait_ns = -1;  // the first try succeeded
    if (auto* ext = std::get_if<Ext>(&impl_)) {
      // Trying first would cost a simulated lock one more operation than an unprofiled lock().
      const uint64_t t0 = lock_clock_ns();
      if (ext_lock(**ext, poll)) wait_ns = int64_t(lock_clock_ns() - t0);
    } else if (!raw_try(n)) {
      uint64_t t0 = lock_clock_ns();
      raw_lock(n, poll);
      wait_ns = int64_t(lock_clock_ns() - t0);
    }
    if (profile_) profile_->acquired(wait_ns, false);
    KS_PROBE(lock_acquire, cls_, this, int(wait_ns >= 0), wait_ns >= 0 ? wait_ns : 0, 0);
    start_hold(n);
  }
  bool try_lock(Node& n) {
    if (!raw_try(n)) {
      if (profile_) profile_->try_failed();
      return false;
    }
    if (profile_) profile_->acquired(-1, true);
    KS_PROBE(lock_acquire, cls_, this, 0, int64_t{0}, 1);
    if (profile_ || KS_PROBE_ENABLED(lock_release)) start_hold(n);
    return true;
  }
  void unlock(Node& n) {
    if (n.hold_start) {
      const uint64_t held = lock_clock_ns() - n.hold_start;
      if (n.hold_profiled) profile_->held(held);
      KS_PROBE(lock_release, cls_, this, held);
      n.hold_start = 0;
    }
    raw_unlock(n);
  }

 private:
  // Times the hold when the profile samples this one or a tracer watches releases.
  void start_hold(Node& n) {
    n.hold_profiled = profile_ != nullptr && profile_->sample_hold();
    if (n.hold_profiled || KS_PROBE_ENABLED(lock_release)) n.hold_start = lock_clock_ns();
  }
  template <typename L>
  static auto& node_for(Node& n) {
    if constexpr (std::is_same_v<L, McsLock>)
      return n.mcs;
    else if constexpr (std::is_same_v<L, ClhLock>)
      return n.clh;
    else
      return n.none;
  }
  using Ext = std::unique_ptr<ExternalLock>;
  // True if it waited.
  template <typename Poll>
  static bool ext_lock(ExternalLock& l, Poll& poll) {
    if constexpr (kPolls<Poll>)
      return l.lock([](void* p) { (*static_cast<Poll*>(p))(); }, &poll);
    else
      return l.lock(nullptr, nullptr);
  }
  template <typename Poll>
  void raw_lock(Node& n, Poll& poll) {
    std::visit(
        [&](auto& l) {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, Ext>) {
            ext_lock(*l, poll);
          } else if constexpr (!std::is_same_v<L, std::monostate>) {
            l.lock(node_for<L>(n), poll);
          }
        },
        impl_);
  }
  bool raw_try(Node& n) {
    return std::visit(
        [&](auto& l) {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, std::monostate>)
            return false;
          else if constexpr (std::is_same_v<L, Ext>)
            return l->try_lock();
          else
            return l.try_lock(node_for<L>(n));
        },
        impl_);
  }
  void raw_unlock(Node& n) {
    std::visit(
        [&](auto& l) {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, Ext>)
            l->unlock();
          else if constexpr (!std::is_same_v<L, std::monostate>)
            l.unlock(node_for<L>(n));
        },
        impl_);
  }

  std::variant<std::monostate, TicketLock, McsLock, ClhLock, TtasLock, PthreadLock, SpinYieldLock,
               Ext>
      impl_;
  Strategy strategy_;
  LockProfile* profile_;
  const char* cls_;
};

}  // namespace kvmscale::locks
