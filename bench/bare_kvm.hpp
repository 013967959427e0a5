// Bare VMs on raw /dev/kvm ioctls, with no kvmscale code: the baseline bench_scale compares
// kvmscale's launch and teardown with, and the VMs its notifier section holds in one process.
//
// Each VM is the least KVM runs: one memslot of a few pages (carved from one arena mapped once,
// so creating a VM changes no mapping of the process), one vCPU in real mode at a `hlt`, run
// until KVM_EXIT_HLT (no in-kernel irqchip, so `hlt` exits to userspace; KVM-PVM emulates the
// real-mode instruction). The VM fd is closed once the vCPU exists: the vCPU fd and its kvm_run
// mapping keep the VM alive, so a VM costs one fd (the 20,000-fd limit holds 10,000 of them).
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvmscale::bench {

class BareVms {
 public:
  static constexpr uint64_t kPagesPerVm = 4;

  // Opens /dev/kvm and maps guest memory for up to `capacity` VMs. Throws std::system_error
  // naming the operation.
  explicit BareVms(uint32_t capacity);
  ~BareVms();  // unmap_each_vm() for what is left, then the arena
  BareVms(const BareVms&) = delete;
  BareVms& operator=(const BareVms&) = delete;

  // Creates, sets up and runs one more VM until its `hlt`; it stays alive afterwards.
  void launch_one();
  uint32_t size() const { return uint32_t(vms_.size()); }
  // Time spent inside KVM_CREATE_VM so far (it registers the VM's mmu notifier on this mm).
  uint64_t create_vm_ns() const { return create_vm_ns_; }

  // Teardown the way a VMM freeing each VM does: munmap its kvm_run, close its vCPU fd (the VM
  // goes with the last reference). Every munmap runs the mmu notifier of every VM still alive.
  void unmap_each_vm();
  // Closes every vCPU fd but keeps the kvm_run mappings: the VMs live until the process exits,
  // whose mm teardown releases the notifiers once (mmu_notifier_release) and then unmaps.
  void close_fds_keep_mappings();

 private:
  struct Vm {
    int vcpu_fd;
    kvm_run* run;
  };
  int kvm_fd_ = -1;
  size_t run_size_ = 0;
  uint8_t* arena_ = nullptr;
  uint32_t capacity_ = 0;
  uint64_t create_vm_ns_ = 0;
  std::vector<Vm> vms_;
};

}  // namespace kvmscale::bench
