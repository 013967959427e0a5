/* blockwake: vCPUs BLOCK with timeouts and WAKE each other, checking every result (written from
 * docs/hypercalls.md alone). Exit code: the number of wrong results (0 = all good).
 *
 * arg1 = 0 (storm): for arg0 rounds (default 2000) each vCPU wakes the next vCPU (3 rounds in
 *   4), then blocks with a timeout of 20 us .. 2 ms; BLOCK must return 0 or 1.
 * arg1 = 1 (huge timeouts): vCPU 0 blocks with timeouts 2^64-1, 2^63, 2^63-1 and 2^62; vCPU 1
 *   waits until vCPU 0 is about to block, spins 20 ms and wakes it. Each BLOCK must return 0
 *   after at least 10 ms (a huge timeout means no timeout, never "timed out at once"). */
#include "runtime.h"

static volatile uint64_t about_to_block; /* round vCPU 0 is entering, for vCPU 1 */

static uint64_t storm(struct ks_ctx* ctx, uint64_t rounds) {
  uint32_t n = ctx->boot->nr_vcpus, next = (ctx->vcpu + 1) % n;
  uint64_t seed = 0x9e3779b97f4a7c15ull * (ctx->vcpu + 1), bad = 0, timeouts = 0;
  ks_metric_name(ctx, 0, "rounds");
  ks_metric_name(ctx, 1, "timeouts");
  ks_metric_name(ctx, 2, "bad_results");
  ks_boot_done(ctx);
  for (uint64_t i = 1; i <= rounds; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t timeout = 20000 + (seed >> 33) % 2000000;
    if (n > 1 && (seed >> 61) != 0 && ks_wake(ctx, next) != 0) bad++;
    int64_t r = ks_block(ctx, timeout);
    if (r == 1)
      timeouts++;
    else if (r != 0)
      bad++;
    ctx->hc->progress = i;
    ks_metric_set(ctx, 0, i);
    ks_metric_set(ctx, 1, timeouts);
    ks_metric_set(ctx, 2, bad);
  }
  if (n > 1) ks_wake(ctx, next); /* do not leave the next one waiting on us */
  return bad;
}

static uint64_t huge_timeouts(struct ks_ctx* ctx) {
  static const uint64_t timeouts[] = {~0ull, 1ull << 63, (1ull << 63) - 1, 1ull << 62};
  const uint64_t count = sizeof timeouts / sizeof timeouts[0];
  uint64_t bad = 0;
  ks_metric_name(ctx, 2, "bad_results");
  ks_boot_done(ctx);
  if (ctx->boot->nr_vcpus < 2) return 1;
  for (uint64_t i = 1; i <= count; i++) {
    if (ctx->vcpu == 0) {
      uint64_t t0 = ks_clock_ns(ctx);
      about_to_block = i;
      int64_t r = ks_block(ctx, timeouts[i - 1]);
      uint64_t waited = ks_clock_ns(ctx) - t0;
      if (r != 0 || waited < 10000000) {
        ks_printf(ctx, "BLOCK(%lx) returned %ld after %lu ns\n", timeouts[i - 1], r, waited);
        bad++;
      }
    } else if (ctx->vcpu == 1) {
      while (about_to_block != i) ks_pause();
      uint64_t t0 = ks_clock_ns(ctx);
      while (ks_clock_ns(ctx) - t0 < 20000000) ks_pause();
      ks_wake(ctx, 0);
    }
    ks_metric_set(ctx, 2, bad);
  }
  return bad;
}

int guest_main(struct ks_ctx* ctx) {
  uint64_t bad = ks_arg(ctx, 1, 0) == 1 ? huge_timeouts(ctx) : storm(ctx, ks_arg(ctx, 0, 2000));
  return bad > 255 ? 255 : (int)bad;
}
