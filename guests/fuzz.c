/* fuzz: a hostile guest, seeded. Written from docs/hypercalls.md alone, it throws at kvmscale what
 * a buggy or malicious guest could: random hypercalls with random arguments (addresses inside,
 * at the edge of and far outside RAM), other vCPUs' hypercall pages rewritten while they are in
 * use, console bytes of any value, wakes, blocks and yields; and, rarely (each ends this VM),
 * unknown ports of every size, MMIO past RAM, page-table, GDT and boot-info scribbles and
 * privileged instructions. kvmscale must contain all of it: no crash or hang of kvmscale, other
 * VMs unharmed, a valid record.
 *
 * arg2: seed (default 1), mixed with the VM and vCPU index; arg3: iterations (default 3000);
 * arg4: 1 in N iterations is a destructive action (default 1500). Returns 0 if it got to the end.
 */
#include "runtime.h"

static uint64_t next(uint64_t* s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* A guest-physical address: mostly valid, often at the edges, sometimes absurd. */
static uint64_t any_gpa(struct ks_ctx* ctx, uint64_t* s) {
  uint64_t end = ctx->boot->mem_size, r = next(s);
  switch (r % 8) {
    case 0: return r >> 8;                            /* anywhere in 2^56 */
    case 1: return end - (r >> 40) % 64;              /* the last bytes of RAM */
    case 2: return end + (r >> 40) % 8192;            /* just past RAM */
    case 3: return ~0ull - (r >> 40) % 4096;          /* wraps */
    case 4: return KS_HCALL_GPA + (r >> 40) % 0x4000; /* hypercall pages */
    default: return KS_RAM_GPA + (r >> 20) % (end - KS_RAM_GPA);
  }
}

static uint64_t any_len(uint64_t* s) {
  uint64_t r = next(s);
  switch (r % 5) {
    case 0: return 0;
    case 1: return KS_CONSOLE_MAX + (r >> 40) % 3 - 1;
    case 2: return r >> 4;
    default: return (r >> 40) % 128;
  }
}

static void random_hypercall(struct ks_ctx* ctx, uint64_t* s) {
  uint64_t r = next(s);
  uint64_t op = r % 12; /* 0..8 are defined; 9.. are unknown */
  if (op == KS_HC_EXIT) op = KS_HC_NOP;
  if (op == KS_HC_BLOCK) {
    ks_block(ctx, 1000 + (r >> 40) % 200000); /* short: nobody may wake it */
    return;
  }
  uint64_t a0 = (r >> 32) & 1 ? any_gpa(ctx, s) : next(s) % 80;
  uint64_t a1 = op == KS_HC_CONSOLE ? any_len(s) : any_gpa(ctx, s);
  ks_hcall(ctx->hc, op, a0, a1);
}

/* Rewrite another vCPU's hypercall page while that vCPU may be using it. */
static void scribble_peer_page(struct ks_ctx* ctx, uint64_t* s) {
  uint32_t peer = (uint32_t)(next(s) % ctx->boot->nr_vcpus);
  volatile struct ks_hcall_page* p =
      (volatile struct ks_hcall_page*)(uintptr_t)(KS_HCALL_GPA + peer * KS_PAGE_SIZE);
  p->op = next(s) % 12;
  p->args[0] = any_gpa(ctx, s);
  p->args[1] = any_len(s);
}

static void random_console(struct ks_ctx* ctx, uint64_t* s) {
  static char buf[KS_MAX_VCPUS][64];
  char* b = buf[ctx->vcpu % KS_MAX_VCPUS];
  uint64_t n = next(s) % 64;
  for (uint64_t i = 0; i < n; i++) b[i] = (char)next(s);
  ks_console(ctx, b, n);
}

/* Ends this VM one way or another (or, on some backends, does nothing visible). */
static void destructive(struct ks_ctx* ctx, uint64_t* s) {
  uint64_t r = next(s);
  uint16_t port = (uint16_t)(r >> 16);
  switch (r % 9) {
    case 0: __asm__ volatile("outb %%al, %%dx" : : "a"(r), "d"(port)); break;
    case 1: __asm__ volatile("outl %%eax, %%dx" : : "a"(r), "d"(port)); break;
    case 2: {
      uint16_t v;
      __asm__ volatile("inw %%dx, %%ax" : "=a"(v) : "d"(port));
      break;
    }
    case 3: *(volatile uint64_t*)(uintptr_t)any_gpa(ctx, s) = r; break; /* maybe MMIO */
    case 4:                                                             /* page tables */
      *(volatile uint64_t*)(uintptr_t)(KS_PML4_GPA + (r >> 8) % 0x6000 / 8 * 8) = next(s);
      break;
    case 5: *(volatile uint64_t*)(uintptr_t)(KS_GDT_GPA + (r >> 8) % 0x80 / 8 * 8) = next(s); break;
    case 6: /* the boot-info page other vCPUs read */
      *(volatile uint64_t*)(uintptr_t)(KS_BOOTINFO_GPA + (r >> 8) % 0x100 / 8 * 8) = next(s);
      break;
    case 7: __asm__ volatile("hlt"); break; /* a BLOCK nobody may end */
    default: {
      switch ((r >> 8) % 4) {
        case 0: __asm__ volatile("cli; sti"); break;
        case 1: {
          uint32_t lo, hi;
          __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"((uint32_t)(r >> 32)));
          break;
        }
        case 2: __asm__ volatile("wrmsr" : : "c"((uint32_t)(r >> 32)), "a"(0), "d"(0)); break;
        default: __asm__ volatile("invlpg (%0)" : : "r"(any_gpa(ctx, s)) : "memory"); break;
      }
    }
  }
}

int guest_main(struct ks_ctx* ctx) {
  uint64_t seed = ks_arg(ctx, 2, 1) * 0x9e3779b97f4a7c15ull + ctx->boot->vm_index * 7919ull +
                  ctx->vcpu * 104729ull + 1;
  uint64_t iterations = ks_arg(ctx, 3, 3000), rare = ks_arg(ctx, 4, 1500);
  uint64_t s = seed ? seed : 1;
  ks_metric_name(ctx, 0, "fuzz_iterations");
  ks_boot_done(ctx);
  for (uint64_t i = 1; i <= iterations; i++) {
    uint64_t r = next(&s);
    if (r % rare == 0) {
      destructive(ctx, &s);
    } else {
      switch ((r >> 16) % 8) {
        case 0: scribble_peer_page(ctx, &s); break;
        case 1: random_console(ctx, &s); break;
        case 2: ks_wake(ctx, (uint32_t)(next(&s) % (ctx->boot->nr_vcpus + 2))); break;
        case 3: ks_yield(ctx); break;
        default: random_hypercall(ctx, &s); break;
      }
    }
    ks_metric_set(ctx, 0, i);
  }
  return 0;
}
