// The one clock every timestamp of a run reads (vmm::now_ns, the locks' profiles, the policy's
// statistics). By default CLOCK_MONOTONIC; a simulation installs its virtual time with
// ClockOverride, and everything that reads clock_ns() on that thread then reads virtual time.
//
// Why a thread-local pointer: a simulation runs all its actors on one host thread, so the
// override belongs to that thread: other threads (a KVM run, a second simulation in the same
// process, a test's helper thread) keep their own clock, and setting it needs no atomics.
// `constinit` makes the access a plain %fs-relative load (no TLS wrapper call); with no override
// the cost is that load and a branch predicted not taken, before the clock_gettime vDSO call.
#pragma once

#include <time.h>

#include <cstdint>

namespace kvmscale::locks {

// CLOCK_MONOTONIC in ns: the host's clock, also what a simulation reports as its own wall time.
inline uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// A replacement clock: now(ctx) in ns.
struct ClockSource {
  uint64_t (*now)(const void* ctx);
  const void* ctx;
};

// The calling thread's override; null: monotonic_ns().
inline constinit thread_local const ClockSource* tls_clock_source = nullptr;

inline uint64_t clock_ns() {
  if (const ClockSource* c = tls_clock_source; __builtin_expect(c != nullptr, 0))
    return c->now(c->ctx);
  return monotonic_ns();
}

// Installs `src` as this thread's clock for the guard's lifetime (restores the previous one:
// overrides nest). `src` must outlive the guard.
class ClockOverride {
 public:
  explicit ClockOverride(const ClockSource& src) : prev_(tls_clock_source) {
    tls_clock_source = &src;
  }
  ~ClockOverride() { tls_clock_source = prev_; }
  ClockOverride(const ClockOverride&) = delete;
  ClockOverride& operator=(const ClockOverride&) = delete;

 private:
  const ClockSource* prev_;
};

}  // namespace kvmscale::locks
