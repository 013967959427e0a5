#include "vmm/vm.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "locks/probe.hpp"
#include "vmm/boot.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::vmm {

namespace {
std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%" PRIx64, v);
  return b;
}
}  // namespace

Vm::Vm(const KvmSystem& kvm, Backend backend, const VmSpec& spec, VmPlacement placement)
    : spec_(spec),
      console_(spec.echo_console, "[vm" + std::to_string(spec.index) + "] "),
      running_vcpus_(spec.nr_vcpus) {
  const uint64_t t0 = now_ns();  // the VM's memory and KVM_CREATE_VM count as its creation
  mem_ = placement.memory ? std::make_unique<mm::GuestMemory>(placement.memory, spec.mem_size)
                          : std::make_unique<mm::GuestMemory>(spec.mem_size);
  VmFd fd = kvm.create_vm();
  BootParams bp;
  bp.vm_index = spec.index;
  bp.nr_vcpus = spec.nr_vcpus;
  bp.image = spec.image;
  bp.guest_args = spec.guest_args;
  write_boot_area(*mem_, bp);
  // Slot 0: the VMM-owned low area (tables, pages, image, stacks). Slot 1: the guest's free RAM,
  // kept separate so that memory policies (populate-on-demand) can apply to it alone.
  fd.set_memory_region(0, 0, KS_RAM_GPA, mem_->host_base());
  fd.set_memory_region(1, KS_RAM_GPA, spec.mem_size - KS_RAM_GPA, mem_->host_base() + KS_RAM_GPA);
  for (uint32_t i = 0; i < spec.nr_vcpus; i++) {
    VcpuFd vfd = fd.create_vcpu(static_cast<int>(i), !placement.defer_run_mapping);
    setup_vcpu(vfd, i, backend, kvm.supported_cpuid());
    vfd.set_signal_mask_during_run(run_signal_mask());
    auto* page = mem_->object_at<ks_hcall_page>(KS_HCALL_GPA + i * KS_PAGE_SIZE);
    vcpus_.push_back(std::make_unique<Vcpu>(std::move(vfd), i, page));
  }
  create_ns_ = now_ns() - t0;
}

void Vm::map_runs(RunArea& area, size_t first_slot) {
  const uint64_t t0 = now_ns();
  for (auto& v : vcpus_) v->fd().use_run(area.map(v->fd(), first_slot + v->index()));
  create_ns_ += now_ns() - t0;
}

Action Vm::run_once(Vcpu& v, Kicker& kicker, PcpuAccess access) {
  static thread_local const int tid = static_cast<int>(syscall(SYS_gettid));
  int other = 0;
  if (!v.runner.compare_exchange_strong(other, tid, std::memory_order_acquire)) {
    double_runs_.fetch_add(1, std::memory_order_relaxed);
    std::fprintf(stderr,
                 "kvmscale: BUG: vm%u vCPU %u entered by thread %d while thread %d runs it\n",
                 index(), v.index(), tid, other);
#ifndef NDEBUG
    std::abort();
#endif
    return {Action::Kind::Kicked};  // leave it to the thread inside; the scheduler decides again
  }
  // Cleared once the exit is handled: the kvm_run page and the vCPU's stats are ours until then.
  struct Release {
    std::atomic<int>& r;
    ~Release() { r.store(0, std::memory_order_release); }
  } release{v.runner};
  kvm_run* run = v.fd().run_state();
  kicker.enter(run);
  uint64_t t0 = now_ns();
  int r = 0;
  try {
    r = v.fd().run();
  } catch (const KvmError& e) {
    kicker.leave(run);
    return host_failure(std::string(e.what()) +
                        (e.error() == EAGAIN || e.error() == ENOMEM
                             ? " (the kernel could not start a thread or allocate memory for "
                               "the VM: raise ulimit -u or the pids cgroup's pids.max)"
                             : ""));
  }
  v.stats.run_ns += now_ns() - t0;
  v.stats.runs++;
  bool kicked = kicker.leave(run);
  if (r == -EINTR) {
    v.stats.exits[KVM_EXIT_INTR]++;
    if (kicked) v.stats.kicks++;
    return {Action::Kind::Kicked};
  }
  return handle_exit(v, access);
}

Action Vm::handle_exit(Vcpu& v, PcpuAccess access) {
  kvm_run* run = v.fd().run_state();
  uint32_t reason = run->exit_reason;
  v.stats.exits[reason < kExitReasonSlots ? reason : 0]++;
  switch (reason) {
    case KVM_EXIT_IO:
      if (run->io.port == KS_DOORBELL_PORT && run->io.direction == KVM_EXIT_IO_OUT)
        return dispatch_hypercall(
            mm::GuestView(*mem_, index(), access.tlb, access.safe_point, access.p2m), v.page(),
            v.index(), nr_vcpus(), v.stats, console_);
      // The legacy POST/delay port: KVM absorbs writes on some hosts and exits on others (seen
      // on two KVM-PVM hosts); ignore them everywhere so guests see one behaviour.
      if (run->io.port == 0x80 && run->io.direction == KVM_EXIT_IO_OUT)
        return {Action::Kind::Resume};
      if (run->io.port == KS_DOORBELL_PORT)
        return Action::crash("read from the doorbell port " + hex(KS_DOORBELL_PORT) +
                             " (hypercalls are `out`, docs/hypercalls.md)");
      return Action::crash(std::string("I/O ") + (run->io.direction ? "write" : "read") +
                           " to unknown port " + hex(run->io.port) + " (size " +
                           std::to_string(run->io.size) + ")");
    case KVM_EXIT_HLT:
      return {Action::Kind::Block, 0};  // no interrupts here: hlt sleeps until a wake
    case KVM_EXIT_MMIO:
      return Action::crash(std::string("MMIO ") + (run->mmio.is_write ? "write" : "read") + " at " +
                           hex(run->mmio.phys_addr) + " outside guest memory");
    case KVM_EXIT_SHUTDOWN: return Action::crash("triple fault (shutdown)");
    case KVM_EXIT_FAIL_ENTRY:
      return Action::crash("VM entry failed, hardware reason " +
                           hex(run->fail_entry.hardware_entry_failure_reason));
    case KVM_EXIT_INTERNAL_ERROR: {
      // What KVM reports (suberror 1 = emulation failure, e.g. an instruction fetch from MMIO,
      // sysret, monitor/mwait), its data words, and where the guest was.
      std::string why = "KVM internal error, suberror " + std::to_string(run->internal.suberror);
      const uint32_t n = std::min<uint32_t>(run->internal.ndata, 16);
      if (n) {
        why += ", data";
        for (uint32_t i = 0; i < n; i++) why += " " + hex(run->internal.data[i]);
      }
      try {
        why += ", rip " + hex(v.fd().regs().rip);
      } catch (const std::exception&) {
        // the reason stands without the RIP
      }
      return Action::crash(why);
    }
    default:
      return Action::crash(std::string("unhandled exit ") + exit_reason_name(reason) + " (" +
                           std::to_string(reason) + ")");
  }
}

Action Vm::host_failure(const std::string& what) {
  {
    std::lock_guard lock(fate_mu_);
    if (host_error_.empty()) host_error_ = "vm" + std::to_string(index()) + ": " + what;
  }
  failed_on_host_.store(true, std::memory_order_release);
  return Action::crash("host error: " + what);
}

std::string Vm::host_error() const {
  std::lock_guard lock(fate_mu_);
  return host_error_;
}

bool Vm::crash(const std::string& reason) {
  std::lock_guard lock(fate_mu_);
  if (state_.load() != VmState::Running) return false;
  crash_reason_ = reason;
  state_.store(VmState::Crashed, std::memory_order_release);
  KS_PROBE(vm_crash, index(), reason.c_str());
  return true;
}

bool Vm::vcpu_exited(Vcpu& v, int64_t code) {
  std::lock_guard lock(fate_mu_);
  v.exited = true;
  v.exit_code = code;
  if (code != 0 && exit_code_ == 0) exit_code_ = code;
  if (running_vcpus_.fetch_sub(1) != 1) return false;
  if (state_.load() == VmState::Running) state_.store(VmState::Exited, std::memory_order_release);
  return true;
}

std::string Vm::crash_reason() const {
  std::lock_guard lock(fate_mu_);
  return crash_reason_;
}

int64_t Vm::exit_code() const {
  std::lock_guard lock(fate_mu_);
  return exit_code_;
}

}  // namespace kvmscale::vmm
