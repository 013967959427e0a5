/* The calibrated busy loop shared by guests and host benchmarks: the same two instructions on
 * both sides, so ns/iteration compares guest execution speed with the host's. */
#ifndef KS_LOOP_H
#define KS_LOOP_H
#include <stdint.h>
static inline void ks_busy_loop(uint64_t iterations) {
  if (iterations == 0) return;
  /* 32-byte aligned so the jump never straddles a 32-byte boundary (Intel JCC erratum). */
  __asm__ volatile(".p2align 5\n1: dec %0\n\tjnz 1b" : "+r"(iterations) : : "cc");
}
#endif
