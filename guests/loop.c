/* loop: the native-speed probe. Times arg0 iterations (default 2^28) of the shared busy loop with
 * the host clock and publishes loop_ns / loop_iterations. */
#include "ks_loop.h"
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t iterations = ks_arg(ctx, 0, 1u << 28);
  ks_metric_name(ctx, 0, "loop_iterations");
  ks_metric_name(ctx, 1, "loop_ns");
  ks_boot_done(ctx);
  uint64_t t0 = ks_clock_ns(ctx);
  ks_busy_loop(iterations);
  uint64_t t1 = ks_clock_ns(ctx);
  ks_metric_set(ctx, 0, iterations);
  ks_metric_set(ctx, 1, t1 - t0);
  return 0;
}
