// Which virtualization backend /dev/kvm is, and what that implies for booting guests.
#pragma once

#include <string>

namespace kvmscale::vmm {

enum class Backend { Unknown, Pvm, Vmx, Svm };

// KVM-PVM registers a per-vCPU "virtual interrupt flag" page with this MSR (see docs/pvm.md).
inline constexpr unsigned kPvmVifMsr = 0x4b564d10;
inline constexpr unsigned long long kPvmVifEnable = 0x400;

// Detected from the loaded kernel modules: kvm_pvm, kvm_intel or kvm_amd.
Backend detect_backend(const std::string& sysfs_module_dir = "/sys/module");
const char* backend_name(Backend b);

}  // namespace kvmscale::vmm
