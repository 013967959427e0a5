// The semaphores of the USDT probes in locks/probe.hpp: a tracer raises one while it watches the
// probe, so KS_PROBE_ENABLED() can skip work only a tracer needs.
#include "locks/probe.hpp"

#if KVMSCALE_PROBES
#define KS_DEFINE_SEMAPHORE(name) \
  __attribute__((section(".probes"))) unsigned short kvmscale_##name##_semaphore = 0;
extern "C" {
KVMSCALE_PROBE_LIST(KS_DEFINE_SEMAPHORE)
}
#endif
