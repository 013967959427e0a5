/* crash: misbehaves on purpose so tests can check containment. arg0 selects how:
 * 0 triple fault, 1 write to an unknown I/O port (0x1234), 2 MMIO beyond RAM, 3 hypercalls with bad
 * arguments (expects error codes back, then exits 0), 4 read the host's address space via a bogus
 * console gpa (expects KS_EFAULT), 5 spin forever without exiting, 6 write every byte value 0..255
 * to the console (not valid UTF-8), then exit 0, 7 `in` from the doorbell port, 8 jump into MMIO
 * (an instruction fetch outside RAM), 9 write port 0x80 (the POST port), then exit 0. */
#include "runtime.h"

static int bad_hypercalls(struct ks_ctx* ctx) {
  struct ks_hcall_page* hc = ctx->hc;
  int bad = 0;
  bad |= ks_hcall(hc, 999, 0, 0) != KS_ENOSYS;
  bad |= ks_hcall(hc, KS_HC_CONSOLE, ctx->boot->mem_size - 8, 64) != KS_EFAULT;
  bad |= ks_hcall(hc, KS_HC_CONSOLE, 0x100000, KS_CONSOLE_MAX + 1) != KS_EINVAL;
  bad |= ks_hcall(hc, KS_HC_WAKE, 4096, 0) != KS_EINVAL;
  bad |= ks_hcall(hc, KS_HC_METRIC_NAME, KS_METRIC_SLOTS, 0x100000) != KS_EINVAL;
  bad |= ks_hcall(hc, KS_HC_METRIC_NAME, 0, ~0ull) != KS_EFAULT;
  /* docs/hypercalls.md, "Exact semantics" */
  uint64_t end = ctx->boot->mem_size;
  bad |= ks_hcall(hc, KS_HC_CONSOLE, end + 4096, KS_CONSOLE_MAX + 1) != KS_EINVAL; /* first check */
  bad |= ks_hcall(hc, KS_HC_CONSOLE, end + 4096, 0) != KS_EFAULT;
  bad |= ks_hcall(hc, KS_HC_CONSOLE, 0x100000, 0) != 0;
  static const char empty[] = "";
  bad |= ks_hcall(hc, KS_HC_METRIC_NAME, 1, (uint64_t)(uintptr_t)empty) != KS_EINVAL;
  *(volatile char*)(uintptr_t)(end - 1) = 'a'; /* a name running off the end of RAM */
  bad |= ks_hcall(hc, KS_HC_METRIC_NAME, 1, end - 1) != KS_EINVAL;
  bad |= ks_metric_name(ctx, 2, "first") != 0;
  bad |= ks_metric_name(ctx, 2, "renamed") != 0;
  ks_metric_set(ctx, 2, 7);
  bad |= ks_wake(ctx, ctx->vcpu) != 0; /* two wakes before one block count once */
  bad |= ks_wake(ctx, ctx->vcpu) != 0;
  bad |= ks_block(ctx, 1000000) != 0;
  bad |= ks_block(ctx, 1000000) != 1;
  ks_printf(ctx, "bad hypercalls %s\n", bad ? "NOT rejected" : "rejected");
  return bad;
}

int guest_main(struct ks_ctx* ctx) {
  ks_boot_done(ctx);
  switch (ks_arg(ctx, 0, 0)) {
    case 1: __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(0x1234)); break;
    case 2: *(volatile uint64_t*)(uintptr_t)(ctx->boot->mem_size + 0x1000) = 42; break;
    case 3: return bad_hypercalls(ctx);
    case 4: return ks_hcall(ctx->hc, KS_HC_CONSOLE, 0x7fff00000000ull, 16) == KS_EFAULT ? 0 : 1;
    case 5:
      for (;;) ks_pause();
    case 6: {
      static char bytes[256];
      for (int i = 0; i < 256; i++) bytes[i] = (char)i;
      ks_console(ctx, bytes, sizeof bytes);
      return 0;
    }
    case 7: {
      uint8_t v;
      __asm__ volatile("inb %%dx, %%al" : "=a"(v) : "d"(KS_DOORBELL_PORT));
      break;
    }
    case 8: ((void (*)(void))(uintptr_t)(ctx->boot->mem_size + 0x1000))(); break;
    case 9: __asm__ volatile("outb %%al, $0x80" : : "a"(0)); return 0;
    default: {
      struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
      } idtr = {0, 0};
      __asm__ volatile("lidt %0; int3" : : "m"(idtr));
    }
  }
  return 99; /* not reached when the VMM contains the guest */
}
