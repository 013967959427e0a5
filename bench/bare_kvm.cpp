#include "bench/bare_kvm.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <system_error>

namespace kvmscale::bench {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint8_t kHlt = 0xf4;

uint64_t monotonic_ns() {  // kvmscale's now_ns(), repeated: this file uses no kvmscale code
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

[[noreturn]] void fail(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

int checked_ioctl(int fd, unsigned long request, const char* name, unsigned long arg = 0) {
  int r;
  do r = ioctl(fd, request, arg);
  while (r < 0 && errno == EINTR);
  if (r < 0) fail(name);
  return r;
}

// Closes an fd when a set-up step throws.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

BareVms::BareVms(uint32_t capacity) : capacity_(capacity) {
  kvm_fd_ = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm_fd_ < 0) fail("open /dev/kvm");
  int size = ioctl(kvm_fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size <= 0) {
    close(kvm_fd_);
    fail("KVM_GET_VCPU_MMAP_SIZE");
  }
  run_size_ = size_t(size);
  // MAP_NORESERVE: only each VM's first page (its `hlt`) is ever touched.
  const size_t len = std::max<uint64_t>(capacity, 1) * kPagesPerVm * kPage;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    close(kvm_fd_);
    fail("mmap of the guest-memory arena");
  }
  arena_ = static_cast<uint8_t*>(p);
}

BareVms::~BareVms() {
  unmap_each_vm();
  munmap(arena_, std::max<uint64_t>(capacity_, 1) * kPagesPerVm * kPage);
  close(kvm_fd_);
}

void BareVms::launch_one() {
  if (vms_.size() >= capacity_) throw std::logic_error("BareVms: capacity reached");
  uint8_t* mem = arena_ + vms_.size() * kPagesPerVm * kPage;
  mem[0] = kHlt;  // the guest: one instruction at GPA 0

  const uint64_t t0 = monotonic_ns();
  FdGuard vm{checked_ioctl(kvm_fd_, KVM_CREATE_VM, "KVM_CREATE_VM")};
  create_vm_ns_ += monotonic_ns() - t0;
  kvm_userspace_memory_region slot{};
  slot.slot = 0;
  slot.guest_phys_addr = 0;
  slot.memory_size = kPagesPerVm * kPage;
  slot.userspace_addr = reinterpret_cast<uint64_t>(mem);
  checked_ioctl(vm.fd, KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION",
                reinterpret_cast<unsigned long>(&slot));
  FdGuard vcpu{checked_ioctl(vm.fd, KVM_CREATE_VCPU, "KVM_CREATE_VCPU", 0)};
  close(vm.fd);  // the vCPU holds the VM
  vm.fd = -1;
  fcntl(vcpu.fd, F_SETFD, FD_CLOEXEC);

  void* run = mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.fd, 0);
  if (run == MAP_FAILED) fail("mmap of kvm_run");
  Vm v{vcpu.fd, static_cast<kvm_run*>(run)};
  try {
    // Real mode, CS base 0, IP 0: the `hlt` above.
    kvm_sregs sregs{};
    checked_ioctl(v.vcpu_fd, KVM_GET_SREGS, "KVM_GET_SREGS",
                  reinterpret_cast<unsigned long>(&sregs));
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    checked_ioctl(v.vcpu_fd, KVM_SET_SREGS, "KVM_SET_SREGS",
                  reinterpret_cast<unsigned long>(&sregs));
    kvm_regs regs{};
    regs.rip = 0;
    regs.rflags = 0x2;  // bit 1 is reserved and always set
    checked_ioctl(v.vcpu_fd, KVM_SET_REGS, "KVM_SET_REGS", reinterpret_cast<unsigned long>(&regs));
    for (;;) {
      checked_ioctl(v.vcpu_fd, KVM_RUN, "KVM_RUN");
      if (v.run->exit_reason == KVM_EXIT_HLT) break;
      if (v.run->exit_reason != KVM_EXIT_INTR)
        throw std::runtime_error("bare VM " + std::to_string(vms_.size()) +
                                 ": KVM_RUN exited with reason " +
                                 std::to_string(v.run->exit_reason) + " instead of KVM_EXIT_HLT");
    }
  } catch (...) {
    munmap(v.run, run_size_);
    throw;  // the guard closes the vCPU fd
  }
  vcpu.fd = -1;
  vms_.push_back(v);
}

void BareVms::unmap_each_vm() {
  for (Vm& v : vms_) {
    if (v.run) munmap(v.run, run_size_);
    if (v.vcpu_fd >= 0) close(v.vcpu_fd);
  }
  vms_.clear();
}

void BareVms::close_fds_keep_mappings() {
  for (Vm& v : vms_) {
    close(v.vcpu_fd);
    v.vcpu_fd = -1;
  }
}

}  // namespace kvmscale::bench
