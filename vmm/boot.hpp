// Puts a VM straight into 64-bit long mode: page tables, GDT/TSS and boot info in guest memory,
// then each vCPU's registers. The state is the one that runs natively on KVM-PVM (docs/pvm.md)
// and is an ordinary long-mode state on VMX/SVM.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "guests/include/kvmscale_abi.h"
#include "mm/guest_memory.hpp"
#include "vmm/backend.hpp"
#include "vmm/kvm.hpp"

namespace kvmscale::vmm {

struct BootParams {
  uint32_t vm_index = 0;
  uint32_t nr_vcpus = 1;
  std::span<const uint8_t> image;
  std::span<const uint64_t> guest_args;  // at most KS_GUEST_ARGS
};

// Smallest and largest guest memory the layout supports.
inline constexpr uint64_t kMinGuestMem = KS_RAM_GPA + (2ull << 20);  // one 2 MiB page of free RAM
inline constexpr uint64_t kMaxGuestMem = KS_MAX_PD << 30;

// Writes everything the guest finds at boot. Throws std::invalid_argument on a bad image/params.
void write_boot_area(const mm::GuestMemory& mem, const BootParams& p);

// Sets CPUID, special and general registers (entry point, stack, arguments) and, on PVM, the VIF
// page MSR. Throws KvmError.
void setup_vcpu(VcpuFd& vcpu, uint32_t index, Backend backend,
                const std::vector<kvm_cpuid_entry2>& cpuid);

}  // namespace kvmscale::vmm
