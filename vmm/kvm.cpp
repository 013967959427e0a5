#include "vmm/kvm.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>

namespace kvmscale::vmm {

KvmError::KvmError(const std::string& what, int err)
    : std::runtime_error(what + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")"),
      err_(err) {}

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

// C layouts of KVM's variable-length structs. In C++, linux-libc-dev 6.1's __DECLARE_FLEX_ARRAY
// adds a 1-byte empty struct before the array: the entries move and the ioctl numbers derived
// from sizeof() change (KVM then answers EINVAL). So kvmscale lays these out itself.
struct CpuidHeader {
  uint32_t nent, padding;  // then kvm_cpuid_entry2[nent]
};
struct MsrsHeader {
  uint32_t nmsrs, pad;  // then kvm_msr_entry[nmsrs]
};
struct SignalMaskHeader {
  uint32_t len;  // then the sigset bytes
};
constexpr unsigned long kGetSupportedCpuid =
    _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, sizeof(CpuidHeader));
constexpr unsigned long kSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, sizeof(CpuidHeader));
constexpr unsigned long kSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, sizeof(MsrsHeader));
constexpr unsigned long kSetSignalMask = _IOC(_IOC_WRITE, KVMIO, 0x8b, sizeof(SignalMaskHeader));
static_assert(kGetSupportedCpuid == 0xc008ae05 && kSetCpuid2 == 0x4008ae90 &&
              kSetMsrs == 0x4008ae89 && kSetSignalMask == 0x4004ae8b);

template <typename Arg>
int xioctl(int fd, unsigned long req, const char* name, Arg arg) {
  int r;
  do r = ::ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR && req != KVM_RUN);
  if (r < 0) throw KvmError(name, errno);
  return r;
}
}  // namespace

KvmSystem::KvmSystem(const char* path) : fd_(::open(path, O_RDWR | O_CLOEXEC)) {
  if (!fd_) throw KvmError(std::string("open ") + path, errno);
  int v = xioctl(fd_.get(), KVM_GET_API_VERSION, "KVM_GET_API_VERSION", 0);
  if (v != KVM_API_VERSION) throw KvmError("KVM_GET_API_VERSION mismatch", EINVAL);
  run_size_ = xioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", 0);
  // Ask with a growing buffer: the number of leaves differs between hosts.
  for (size_t n = 128;; n *= 2) {
    std::vector<uint8_t> buf(sizeof(CpuidHeader) + n * sizeof(kvm_cpuid_entry2));
    auto* c = reinterpret_cast<CpuidHeader*>(buf.data());
    c->nent = static_cast<uint32_t>(n);
    if (::ioctl(fd_.get(), kGetSupportedCpuid, c) == 0) {
      cpuid_.resize(c->nent);
      std::memcpy(cpuid_.data(), buf.data() + sizeof(CpuidHeader),
                  c->nent * sizeof(kvm_cpuid_entry2));
      break;
    }
    if (errno != E2BIG || n > 4096) throw KvmError("KVM_GET_SUPPORTED_CPUID", errno);
  }
}

bool KvmSystem::available(const char* path) { return ::access(path, R_OK | W_OK) == 0; }

int KvmSystem::api_version() const {
  return xioctl(fd_.get(), KVM_GET_API_VERSION, "KVM_GET_API_VERSION", 0);
}

int KvmSystem::check_extension(long cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

VmFd KvmSystem::create_vm() const {
  return VmFd(Fd(xioctl(fd_.get(), KVM_CREATE_VM, "KVM_CREATE_VM", 0)), run_size_);
}

void VmFd::set_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* hva) {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uint64_t>(hva);
  xioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &r);
}

VcpuFd VmFd::create_vcpu(int id, bool map_run) {
  return VcpuFd(Fd(xioctl(fd_.get(), KVM_CREATE_VCPU, "KVM_CREATE_VCPU", id)),
                map_run ? run_size_ : 0);
}

VcpuFd::VcpuFd(Fd fd, int run_size) : fd_(std::move(fd)), run_size_(run_size) {
  if (run_size == 0) return;
  void* p = ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
  if (p == MAP_FAILED) throw KvmError("mmap kvm_run", errno);
  run_ = static_cast<kvm_run*>(p);
}

VcpuFd::VcpuFd(VcpuFd&& o) noexcept
    : fd_(std::move(o.fd_)), run_(std::exchange(o.run_, nullptr)), run_size_(o.run_size_) {}

VcpuFd::~VcpuFd() {
  if (run_ && run_size_) ::munmap(run_, run_size_);
}

int VcpuFd::run() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) == 0) return 0;
  if (errno == EINTR) return -EINTR;  // a kick (signal or immediate_exit)
  // Anything else is the host's failure, EAGAIN included: e.g. the kernel could not start the
  // VM's first-run worker thread under a pids limit, and fails every KVM_RUN of the VM alike.
  throw KvmError("KVM_RUN", errno);
}

kvm_regs VcpuFd::regs() const {
  kvm_regs r{};
  xioctl(fd_.get(), KVM_GET_REGS, "KVM_GET_REGS", &r);
  return r;
}
void VcpuFd::set_regs(const kvm_regs& r) { xioctl(fd_.get(), KVM_SET_REGS, "KVM_SET_REGS", &r); }
kvm_sregs VcpuFd::sregs() const {
  kvm_sregs s{};
  xioctl(fd_.get(), KVM_GET_SREGS, "KVM_GET_SREGS", &s);
  return s;
}
void VcpuFd::set_sregs(const kvm_sregs& s) {
  xioctl(fd_.get(), KVM_SET_SREGS, "KVM_SET_SREGS", &s);
}

int VcpuFd::set_msr(uint32_t index, uint64_t value) {
  struct {
    MsrsHeader hdr;
    kvm_msr_entry entry;
  } m{};
  static_assert(offsetof(decltype(m), entry) == sizeof(MsrsHeader));
  m.hdr.nmsrs = 1;
  m.entry.index = index;
  m.entry.data = value;
  return xioctl(fd_.get(), kSetMsrs, "KVM_SET_MSRS", &m);
}

void VcpuFd::set_cpuid(const std::vector<kvm_cpuid_entry2>& entries) {
  std::vector<uint8_t> buf(sizeof(CpuidHeader) + entries.size() * sizeof(kvm_cpuid_entry2));
  auto* c = reinterpret_cast<CpuidHeader*>(buf.data());
  c->nent = static_cast<uint32_t>(entries.size());
  std::memcpy(buf.data() + sizeof(CpuidHeader), entries.data(),
              entries.size() * sizeof(kvm_cpuid_entry2));
  xioctl(fd_.get(), kSetCpuid2, "KVM_SET_CPUID2", buf.data());
}

void VcpuFd::set_signal_mask_during_run(const sigset_t& mask) {
  uint8_t buf[sizeof(SignalMaskHeader) + 8];
  SignalMaskHeader hdr{8};  // the kernel's sigset size on x86-64
  std::memcpy(buf, &hdr, sizeof hdr);
  std::memcpy(buf + sizeof hdr, &mask, 8);
  xioctl(fd_.get(), kSetSignalMask, "KVM_SET_SIGNAL_MASK", buf);
}

}  // namespace kvmscale::vmm
