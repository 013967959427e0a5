#include "runtime.h"

#include <stdarg.h>

int64_t ks_hcall(struct ks_hcall_page* hc, uint64_t op, uint64_t a0, uint64_t a1) {
  hc->op = op;
  hc->args[0] = a0;
  hc->args[1] = a1;
  /* The memory clobber orders the page writes before the doorbell and the read after it. */
  __asm__ volatile("outl %0, %1" : : "a"(0u), "Nd"((uint16_t)KS_DOORBELL_PORT) : "memory");
  return hc->ret;
}

void ks_console(struct ks_ctx* ctx, const char* s, size_t len) {
  while (len > 0) {
    size_t n = len > KS_CONSOLE_MAX ? KS_CONSOLE_MAX : len;
    ks_hcall(ctx->hc, KS_HC_CONSOLE, (uint64_t)(uintptr_t)s, n);
    s += n;
    len -= n;
  }
}

void ks_boot_done(struct ks_ctx* ctx) { ks_hcall(ctx->hc, KS_HC_BOOT_DONE, 0, 0); }
void ks_yield(struct ks_ctx* ctx) { ks_hcall(ctx->hc, KS_HC_YIELD, 0, 0); }
int64_t ks_block(struct ks_ctx* ctx, uint64_t timeout_ns) {
  return ks_hcall(ctx->hc, KS_HC_BLOCK, timeout_ns, 0);
}
int64_t ks_wake(struct ks_ctx* ctx, uint32_t vcpu) {
  return ks_hcall(ctx->hc, KS_HC_WAKE, vcpu, 0);
}
uint64_t ks_clock_ns(struct ks_ctx* ctx) { return (uint64_t)ks_hcall(ctx->hc, KS_HC_CLOCK, 0, 0); }
int64_t ks_metric_name(struct ks_ctx* ctx, uint32_t slot, const char* name) {
  return ks_hcall(ctx->hc, KS_HC_METRIC_NAME, slot, (uint64_t)(uintptr_t)name);
}
void ks_exit(struct ks_ctx* ctx, int64_t code) {
  for (;;) ks_hcall(ctx->hc, KS_HC_EXIT, (uint64_t)code, 0);
}

void* memset(void* d, int c, size_t n) {
  void* ret = d;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return ret;
}
void* memcpy(void* d, const void* s, size_t n) {
  void* ret = d;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
  return ret;
}
size_t strlen(const char* s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

/* ---- minimal printf: %s %c %d %u %x %lu %ld %lx %llu %% ------------------------------------ */
struct outbuf {
  char buf[256];
  size_t len;
  struct ks_ctx* ctx;
};
static void put(struct outbuf* o, char c) {
  if (o->len == sizeof o->buf) {
    ks_console(o->ctx, o->buf, o->len);
    o->len = 0;
  }
  o->buf[o->len++] = c;
}
static void put_u(struct outbuf* o, uint64_t v, unsigned base) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v % base];
    v /= base;
  } while (v);
  while (n) put(o, tmp[--n]);
}
void ks_printf(struct ks_ctx* ctx, const char* fmt, ...) {
  struct outbuf o = {.len = 0, .ctx = ctx};
  va_list ap;
  va_start(ap, fmt);
  for (; *fmt; fmt++) {
    if (*fmt != '%') {
      put(&o, *fmt);
      continue;
    }
    int longs = 0;
    while (*++fmt == 'l') longs++;
    switch (*fmt) {
      case 's':
        for (const char* s = va_arg(ap, const char*); *s; s++) put(&o, *s);
        break;
      case 'c': put(&o, (char)va_arg(ap, int)); break;
      case 'd': {
        int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
        if (v < 0) {
          put(&o, '-');
          v = -v;
        }
        put_u(&o, (uint64_t)v, 10);
        break;
      }
      case 'u': put_u(&o, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10); break;
      case 'x': put_u(&o, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16); break;
      case '%': put(&o, '%'); break;
      case '\0': fmt--; break;
      default: put(&o, '?');
    }
  }
  va_end(ap);
  if (o.len) ks_console(ctx, o.buf, o.len);
}

void ks_rt_entry(uint64_t vcpu, struct ks_hcall_page* hc, const struct ks_boot_info* boot) {
  struct ks_ctx ctx = {.vcpu = (uint32_t)vcpu, .hc = hc, .boot = boot};
  ks_exit(&ctx, guest_main(&ctx));
}
