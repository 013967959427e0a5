/* kvmscale guest <-> VMM ABI. Shared verbatim by the freestanding guests (C) and the VMM (C++).
 * Everything here is a fixed contract: docs/hypercalls.md describes it for humans. */
#ifndef KVMSCALE_ABI_H
#define KVMSCALE_ABI_H

#include <stdint.h>

#define KS_ABI_VERSION 1u

/* ---- Guest-physical layout (identity mapped with 2 MiB pages) ---------------------------- */
#define KS_GDT_GPA 0x1000ull /* GDT; the TSS follows at KS_TSS_GPA                        */
#define KS_TSS_GPA 0x1800ull
#define KS_PML4_GPA 0x2000ull /* bit 12 clear on purpose: see docs (KVM-PVM quirk)          */
#define KS_PDPT_GPA 0x3000ull
#define KS_PD_GPA 0x4000ull /* KS_MAX_PD pages of page directories                       */
#define KS_MAX_PD 4ull      /* => at most 4 GiB of guest memory                          */
#define KS_BOOTINFO_GPA 0x8000ull
#define KS_HCALL_GPA 0x10000ull  /* one 4 KiB hypercall page per vCPU                         */
#define KS_VIF_GPA 0x50000ull    /* one 4 KiB PVM "virtual IF" page per vCPU                  */
#define KS_IMAGE_GPA 0x100000ull /* guest image is linked here                                */
#define KS_IMAGE_MAX 0x100000ull
#define KS_STACK_GPA 0x200000ull /* vCPU i stack: [KS_STACK_GPA + i*SIZE, +SIZE)              */
#define KS_STACK_SIZE 0x4000ull
#define KS_RAM_GPA 0x400000ull /* everything from here to mem_size is the guest's free RAM  */
#define KS_MAX_VCPUS 64u
#define KS_PAGE_SIZE 4096ull

/* ---- Hypercall doorbell ------------------------------------------------------------------- */
/* The guest fills its hypercall page (op, args) and writes any value to this port with `out`.
 * The VMM validates, performs the call, stores `ret`, and resumes the vCPU. */
#define KS_DOORBELL_PORT 0x5e0u

enum ks_hcall_op {
  KS_HC_NOP = 0,         /* ret 0. For round-trip measurements.                           */
  KS_HC_CONSOLE = 1,     /* args: gpa, len (<= KS_CONSOLE_MAX). ret bytes written          */
  KS_HC_BOOT_DONE = 2,   /* this vCPU finished booting. ret 0                              */
  KS_HC_YIELD = 3,       /* give up the CPU. ret 0                                         */
  KS_HC_BLOCK = 4,       /* args: timeout_ns (0 = no timeout). ret 0 woken, 1 timed out    */
  KS_HC_WAKE = 5,        /* args: vcpu index of the same VM. ret 0                         */
  KS_HC_EXIT = 6,        /* args: code. This vCPU stops; never returns                     */
  KS_HC_CLOCK = 7,       /* ret: host CLOCK_MONOTONIC in ns                                */
  KS_HC_METRIC_NAME = 8, /* args: slot, gpa of NUL-terminated name (< KS_METRIC_NAME_MAX) */
  KS_HC_OP_COUNT
};

/* Error returns (negative, errno-like) */
#define KS_EINVAL (-22ll) /* bad argument            */
#define KS_EFAULT (-14ll) /* bad guest address       */
#define KS_ENOSYS (-38ll) /* unknown operation       */

#define KS_CONSOLE_MAX 1024u
#define KS_METRIC_SLOTS 16u
#define KS_METRIC_NAME_MAX 32u

/* One per vCPU at KS_HCALL_GPA + index * 4 KiB. The first part is the call; the second part is
 * published by the guest without exiting and read by the VMM at any time. */
struct ks_hcall_page {
  uint64_t op;
  uint64_t args[4];
  int64_t ret;
  uint64_t reserved0[2];
  /* Guest-published, read racily by the VMM (aligned 64-bit stores are atomic on x86). */
  volatile uint64_t progress;                 /* guest-defined unit of work done        */
  volatile uint64_t metrics[KS_METRIC_SLOTS]; /* values for slots named by METRIC_NAME  */
};

#define KS_BOOTINFO_MAGIC 0x4b53424f4f54ull /* "KSBOOT" */
#define KS_GUEST_ARGS 8u

/* Filled by the VMM at KS_BOOTINFO_GPA before any vCPU runs; read-only to the guest by contract. */
struct ks_boot_info {
  uint64_t magic;
  uint32_t abi_version;
  uint32_t nr_vcpus;
  uint32_t vm_index;
  uint32_t reserved0;
  uint64_t mem_size;            /* bytes of guest-physical memory, from GPA 0          */
  uint64_t ram_start;           /* KS_RAM_GPA                                           */
  uint64_t ram_end;             /* == mem_size                                          */
  uint64_t args[KS_GUEST_ARGS]; /* guest-specific parameters (--guest-arg) */
};

#endif
