/* hcbench: arg0 (default 10000) hypercalls back to back, timed with the host clock and published
 * as hcall_count / hcall_ns, for round-trip measurements. arg1 = 1: YIELD instead of NOP (for
 * vCPU switch costs). */
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t n = ks_arg(ctx, 0, 10000);
  uint64_t op = ks_arg(ctx, 1, 0) == 1 ? KS_HC_YIELD : KS_HC_NOP;
  ks_metric_name(ctx, 0, "hcall_count");
  ks_metric_name(ctx, 1, "hcall_ns");
  ks_boot_done(ctx);
  uint64_t t0 = ks_clock_ns(ctx);
  for (uint64_t i = 0; i < n; i++) ks_hcall(ctx->hc, op, 0, 0);
  uint64_t t1 = ks_clock_ns(ctx);
  ks_metric_set(ctx, 0, n);
  ks_metric_set(ctx, 1, t1 - t0);
  ctx->hc->progress = n;
  return 0;
}
