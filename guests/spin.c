/* spin: a CPU hog (like NotMyFault). Runs the busy loop in chunks of arg0 iterations (default
 * 2^20) and publishes the iteration count without exiting. arg1 != 0: exit after that many chunks.
 */
#include "ks_loop.h"
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  uint64_t chunk = ks_arg(ctx, 0, 1u << 20), max_chunks = ks_arg(ctx, 1, 0);
  ks_metric_name(ctx, 0, "iterations");
  ks_boot_done(ctx);
  for (uint64_t n = 1;; n++) {
    ks_busy_loop(chunk);
    ctx->hc->progress = n;
    ks_metric_set(ctx, 0, n * chunk);
    if (max_chunks && n >= max_chunks) return 0;
  }
}
