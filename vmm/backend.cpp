#include "vmm/backend.hpp"

#include <unistd.h>

namespace kvmscale::vmm {

Backend detect_backend(const std::string& dir) {
  auto loaded = [&](const char* m) { return ::access((dir + "/" + m).c_str(), F_OK) == 0; };
  // PVM first: a PVM host nested in a VMX/SVM cloud VM may not have kvm_intel/kvm_amd, but if it
  // does, /dev/kvm is still served by whichever registered last; kvm_pvm is the one we must adapt
  // to.
  if (loaded("kvm_pvm")) return Backend::Pvm;
  if (loaded("kvm_intel")) return Backend::Vmx;
  if (loaded("kvm_amd")) return Backend::Svm;
  return Backend::Unknown;
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Pvm: return "PVM";
    case Backend::Vmx: return "VMX";
    case Backend::Svm: return "SVM";
    default: return "unknown";
  }
}

}  // namespace kvmscale::vmm
