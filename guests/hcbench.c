/* hcbench: arg0 (default 10000) NOP hypercalls back to back, timed with the host clock and
 * published as hcall_count / hcall_ns, for round-trip measurements. */
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t n = ks_arg(ctx, 0, 10000);
  ks_metric_name(ctx, 0, "hcall_count");
  ks_metric_name(ctx, 1, "hcall_ns");
  ks_boot_done(ctx);
  uint64_t t0 = ks_clock_ns(ctx);
  for (uint64_t i = 0; i < n; i++) ks_hcall(ctx->hc, KS_HC_NOP, 0, 0);
  uint64_t t1 = ks_clock_ns(ctx);
  ks_metric_set(ctx, 0, n);
  ks_metric_set(ctx, 1, t1 - t0);
  ctx->hc->progress = n;
  return 0;
}
