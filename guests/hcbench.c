/* hcbench: arg0 (default 10000) NOP hypercalls back to back, for round-trip measurements. */
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t n = ks_arg(ctx, 0, 10000);
  ks_boot_done(ctx);
  for (uint64_t i = 0; i < n; i++) ks_hcall(ctx->hc, KS_HC_NOP, 0, 0);
  ctx->hc->progress = n;
  return 0;
}
