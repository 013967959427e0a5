// RAII wrappers over the KVM ioctl API. Every failure throws KvmError naming the ioctl and errno.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvmscale::vmm {

class KvmError : public std::runtime_error {
 public:
  KvmError(const std::string& what, int err);
  int error() const { return err_; }

 private:
  int err_;
};

// Owns one file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

class VcpuFd;

class VmFd {
 public:
  VmFd(Fd fd, int run_size) : fd_(std::move(fd)), run_size_(run_size) {}
  void set_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* hva);
  // With map_run false, the caller maps the kvm_run page later (VcpuFd::use_run).
  VcpuFd create_vcpu(int id, bool map_run = true);
  int fd() const { return fd_.get(); }

 private:
  Fd fd_;
  int run_size_;
};

// A vCPU fd plus its shared kvm_run mapping: its own, or one a RunArea owns (then closing the fd
// leaves the VM alive until that page is unmapped).
class VcpuFd {
 public:
  // Maps the kvm_run page itself when run_size > 0.
  VcpuFd(Fd fd, int run_size);
  VcpuFd(VcpuFd&& o) noexcept;
  VcpuFd& operator=(VcpuFd&&) = delete;
  VcpuFd(const VcpuFd&) = delete;
  ~VcpuFd();

  // One KVM_RUN. Returns 0, or -EINTR when a signal / immediate_exit stopped it; throws otherwise.
  int run();
  kvm_run* run_state() const { return run_; }
  // Uses a kvm_run page mapped by someone else (vmm::RunArea), who also unmaps it.
  void use_run(kvm_run* run) { run_ = run; }

  kvm_regs regs() const;
  void set_regs(const kvm_regs& r);
  kvm_sregs sregs() const;
  void set_sregs(const kvm_sregs& s);
  // Returns how many MSRs KVM accepted (KVM_SET_MSRS semantics).
  int set_msr(uint32_t index, uint64_t value);
  void set_cpuid(const std::vector<kvm_cpuid_entry2>& entries);
  // The signal mask in force while inside KVM_RUN only.
  void set_signal_mask_during_run(const sigset_t& mask);
  int fd() const { return fd_.get(); }

 private:
  Fd fd_;
  kvm_run* run_ = nullptr;
  int run_size_ = 0;
};

// /dev/kvm itself.
class KvmSystem {
 public:
  explicit KvmSystem(const char* path = "/dev/kvm");
  int api_version() const;
  int check_extension(long cap) const;  // 0 = absent
  int vcpu_mmap_size() const { return run_size_; }
  const std::vector<kvm_cpuid_entry2>& supported_cpuid() const { return cpuid_; }
  VmFd create_vm() const;
  static bool available(const char* path = "/dev/kvm");

 private:
  Fd fd_;
  int run_size_ = 0;
  std::vector<kvm_cpuid_entry2> cpuid_;
};

}  // namespace kvmscale::vmm
