// USDT probes (provider "kvmscale") for bpftrace, perf and SystemTap; docs/tracing.md lists them.
// A probe site is one nop and an ELF note; its arguments are values the code already has. What
// only a tracer needs (a clock read) is computed under KS_PROBE_ENABLED(name), a load of the
// probe's semaphore, which the tracer raises while attached. Without <sys/sdt.h> at configure
// time (Debian: systemtap-sdt-dev) KVMSCALE_PROBES is 0 and every probe compiles to nothing.
#pragma once

// Every probe, once: its semaphore is defined in locks/probe.cpp.
// clang-format off
#define KVMSCALE_PROBE_LIST(X)                                                                \
  X(lock_acquire) X(lock_release)                                                             \
  X(xcall_send) X(xcall_ack) X(xcall_done) X(flush)                                           \
  X(sched_pick) X(sched_preempt) X(sched_steal) X(sched_trylock) X(sched_tickle)              \
  X(pod_populate) X(pod_zero_check) X(pod_reclaim) X(pod_restore) X(pod_sweep)                \
  X(hcall_entry) X(hcall_exit) X(vm_boot_done) X(vm_crash)
// clang-format on

#if KVMSCALE_PROBES
#define _SDT_HAS_SEMAPHORES 1
#define SDT_USE_VARIADIC 1
#include <sys/sdt.h>

#define KS_DECLARE_SEMAPHORE(name) extern unsigned short kvmscale_##name##_semaphore;
extern "C" {
KVMSCALE_PROBE_LIST(KS_DECLARE_SEMAPHORE)
}
#undef KS_DECLARE_SEMAPHORE

#define KS_PROBE(name, ...) STAP_PROBEV(kvmscale, name, __VA_ARGS__)
#define KS_PROBE_ENABLED(name) \
  __builtin_expect(*static_cast<volatile unsigned short*>(&kvmscale_##name##_semaphore) != 0, 0)
#else
#define KS_PROBE(name, ...) \
  do {                      \
  } while (0)
#define KS_PROBE_ENABLED(name) false
#endif
