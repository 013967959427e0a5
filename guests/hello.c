/* hello: greets on the console from every vCPU, reports boot done, exits 0. */
#include "runtime.h"

int guest_main(struct ks_ctx* ctx) {
  ks_printf(ctx, "hello from vm %u vcpu %u of %u (%lu MiB)\n", ctx->boot->vm_index, ctx->vcpu,
            ctx->boot->nr_vcpus, ctx->boot->mem_size >> 20);
  ks_boot_done(ctx);
  return 0;
}
