/* boot-zero: boots like Windows. Each vCPU zeroes its share of free RAM page by page, then reports
 * boot done. arg0 = what to do next: 0 exit, 1 idle (block), 2 spin. */
#include "ks_loop.h"
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  const struct ks_boot_info* b = ctx->boot;
  uint64_t pages = (b->ram_end - b->ram_start) / KS_PAGE_SIZE;
  uint64_t share = pages / b->nr_vcpus, first = share * ctx->vcpu;
  if (ctx->vcpu == b->nr_vcpus - 1) share = pages - first; /* last vCPU takes the remainder */
  ks_metric_name(ctx, 0, "pages_zeroed");
  char* p = (char*)(uintptr_t)(b->ram_start + first * KS_PAGE_SIZE);
  for (uint64_t i = 0; i < share; i++, p += KS_PAGE_SIZE) {
    memset(p, 0, KS_PAGE_SIZE);
    ctx->hc->progress = i + 1;
  }
  ks_metric_set(ctx, 0, share);
  ks_boot_done(ctx);
  switch (ks_arg(ctx, 0, 0)) {
    case 1:
      for (;;) ks_block(ctx, 0);
    case 2:
      for (;;) ks_busy_loop(1u << 20);
    default: return 0;
  }
}
