/* pingpong: vCPUs 2k and 2k+1 wake each other arg0 times (default 1000) and report round trips.
 * An unpaired last vCPU plays against itself. */
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t rounds = ks_arg(ctx, 0, 1000);
  uint32_t me = ctx->vcpu, partner = me ^ 1u;
  if (partner >= ctx->boot->nr_vcpus) partner = me;
  int serve = (me & 1u) == 0;
  ks_metric_name(ctx, 0, "round_trips");
  ks_boot_done(ctx);
  uint64_t t0 = ks_clock_ns(ctx);
  for (uint64_t i = 1; i <= rounds; i++) {
    if (serve) {
      ks_wake(ctx, partner);
      ks_block(ctx, 0);
    } else {
      ks_block(ctx, 0);
      ks_wake(ctx, partner);
    }
    ctx->hc->progress = i;
    ks_metric_set(ctx, 0, i);
  }
  if (serve) {
    ks_metric_name(ctx, 1, "round_trip_ns");
    ks_metric_set(ctx, 1, (ks_clock_ns(ctx) - t0) / rounds);
  }
  return 0;
}
