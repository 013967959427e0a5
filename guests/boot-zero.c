/* boot-zero: boots like Windows. Each vCPU zeroes its share of free RAM page by page, then reports
 * boot done. arg0 = what to do next: 0 exit, 1 idle (block), 2 spin.
 * arg1 = N > 0: integrity mode. While zeroing, pages i % N == 0 get a pattern in their last 8
 * bytes (their first 128 bytes stay zero, so only a full zero check may keep them) and pages
 * i % N == 1 one in their first 8 bytes; after booting every pattern is verified. Mismatches are
 * published as pattern_errors and make the exit code 3: reclaim must never lose data.
 * arg2 = K > 0: hypercalls read PoD RAM. Every K pages, CONSOLE-write 1 byte of the page just
 * zeroed, of the page zeroed 40 pages earlier (by now most likely reclaimed and flushed) and of
 * the page 40 ahead (never touched: the VMM populates it): exit handlers translate the same
 * pages before and after their reclaim, so a flush that missed a pCPU's software TLB shows as a
 * stale hit. Pattern pages are not read: the console gets only NUL bytes. */
#include "ks_loop.h"
#include "runtime.h"

static uint64_t pattern(const struct ks_ctx* ctx, uint64_t gpa) {
  return 0x5a00000000000000ull | ((uint64_t)ctx->boot->vm_index << 40) | gpa;
}

int guest_main(struct ks_ctx* ctx) {
  const struct ks_boot_info* b = ctx->boot;
  uint64_t pages = (b->ram_end - b->ram_start) / KS_PAGE_SIZE;
  uint64_t share = pages / b->nr_vcpus, first = share * ctx->vcpu;
  if (ctx->vcpu == b->nr_vcpus - 1) share = pages - first; /* last vCPU takes the remainder */
  uint64_t every = ks_arg(ctx, 1, 0), hc_every = ks_arg(ctx, 2, 0);
  ks_metric_name(ctx, 0, "pages_zeroed");
  uint64_t base = b->ram_start + first * KS_PAGE_SIZE;
  for (uint64_t i = 0; i < share; i++) {
    volatile uint64_t* p = (volatile uint64_t*)(uintptr_t)(base + i * KS_PAGE_SIZE);
    memset((void*)p, 0, KS_PAGE_SIZE);
    if (every && i % every == 0) p[KS_PAGE_SIZE / 8 - 1] = pattern(ctx, (uint64_t)(uintptr_t)p);
    if (every && i % every == 1) p[0] = pattern(ctx, (uint64_t)(uintptr_t)p);
    if (hc_every && i % hc_every == 0) {
      if (!every || i % every > 1) ks_console(ctx, (const char*)(uintptr_t)p, 1);
      if (i >= 40 && (!every || (i - 40) % every > 1))
        ks_console(ctx, (const char*)(uintptr_t)(base + (i - 40) * KS_PAGE_SIZE), 1);
      if (i + 40 < share)
        ks_console(ctx, (const char*)(uintptr_t)(base + (i + 40) * KS_PAGE_SIZE), 1);
    }
    ctx->hc->progress = i + 1;
  }
  ks_metric_set(ctx, 0, share);
  ks_boot_done(ctx);
  if (every) {
    uint64_t errors = 0, checked = 0;
    for (uint64_t i = 0; i < share; i++) {
      volatile uint64_t* p = (volatile uint64_t*)(uintptr_t)(base + i * KS_PAGE_SIZE);
      if (i % every == 0)
        errors += p[KS_PAGE_SIZE / 8 - 1] != pattern(ctx, (uint64_t)(uintptr_t)p);
      else if (i % every == 1)
        errors += p[0] != pattern(ctx, (uint64_t)(uintptr_t)p);
      else
        continue;
      checked++;
    }
    ks_metric_name(ctx, 1, "pattern_errors");
    ks_metric_name(ctx, 2, "patterns_checked");
    ks_metric_set(ctx, 1, errors);
    ks_metric_set(ctx, 2, checked);
    if (errors) return 3;
  }
  switch (ks_arg(ctx, 0, 0)) {
    case 1:
      for (;;) ks_block(ctx, 0);
    case 2:
      for (;;) ks_busy_loop(1u << 20);
    default: return 0;
  }
}
