/* The tiny freestanding runtime every kvmscale guest links with. */
#ifndef KS_RUNTIME_H
#define KS_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "kvmscale_abi.h"

/* What a guest's main() gets: who it is and where its pages are. */
struct ks_ctx {
  uint32_t vcpu;
  struct ks_hcall_page* hc;
  const struct ks_boot_info* boot;
};

/* Every guest defines this; its return value becomes the vCPU's exit code. */
int guest_main(struct ks_ctx* ctx);

int64_t ks_hcall(struct ks_hcall_page* hc, uint64_t op, uint64_t a0, uint64_t a1);
void ks_console(struct ks_ctx* ctx, const char* s, size_t len);
void ks_printf(struct ks_ctx* ctx, const char* fmt, ...);
void ks_boot_done(struct ks_ctx* ctx);
void ks_yield(struct ks_ctx* ctx);
int64_t ks_block(struct ks_ctx* ctx, uint64_t timeout_ns);
int64_t ks_wake(struct ks_ctx* ctx, uint32_t vcpu);
uint64_t ks_clock_ns(struct ks_ctx* ctx);
__attribute__((noreturn)) void ks_exit(struct ks_ctx* ctx, int64_t code);
/* Name a metric slot once; then publish values with ks_metric_set (no exit). */
int64_t ks_metric_name(struct ks_ctx* ctx, uint32_t slot, const char* name);
static inline void ks_metric_set(struct ks_ctx* ctx, uint32_t slot, uint64_t v) {
  ctx->hc->metrics[slot] = v;
}
static inline uint64_t ks_arg(struct ks_ctx* ctx, unsigned i, uint64_t dflt) {
  uint64_t v = ctx->boot->args[i];
  return v ? v : dflt;
}

void* memset(void* d, int c, size_t n);
void* memcpy(void* d, const void* s, size_t n);
size_t strlen(const char* s);

static inline void ks_pause(void) { __asm__ volatile("pause"); }

#endif
