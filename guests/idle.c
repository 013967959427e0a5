/* idle: boots, then blocks until woken or until arg0 ns pass (0 = forever), counting wake-ups.
 * arg1 != 0: exit after that many wake-ups. */
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t timeout = ks_arg(ctx, 0, 0), max_wakeups = ks_arg(ctx, 1, 0);
  ks_metric_name(ctx, 0, "wakeups");
  ks_boot_done(ctx);
  for (uint64_t n = 1;; n++) {
    ks_block(ctx, timeout);
    ctx->hc->progress = n;
    ks_metric_set(ctx, 0, n);
    if (max_wakeups && n >= max_wakeups) return 0;
  }
}
