// One guest: its memory, KVM VM fd, vCPUs, console and fate. Executors (sched/) decide which host
// thread runs which vCPU; a Vm only turns one KVM_RUN into an Action.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "mm/guest_memory.hpp"
#include "vmm/backend.hpp"
#include "vmm/hypercall.hpp"
#include "vmm/kick.hpp"
#include "vmm/kvm.hpp"
#include "vmm/run_area.hpp"

namespace kvmscale::vmm {

struct VmSpec {
  uint32_t index = 0;
  uint32_t nr_vcpus = 1;
  uint64_t mem_size = 0;
  std::span<const uint8_t> image;
  std::vector<uint64_t> guest_args;
  bool echo_console = false;
};

// Where a VM's memory and kvm_run pages live when one process holds many VMs: in a run's shared
// areas, so that creating and destroying VMs changes no mapping while others live
// (docs/scale.md). The defaults give the VM mappings of its own.
struct VmPlacement {
  uint8_t* memory = nullptr;       // spec.mem_size bytes the VM borrows (an mm::Arena slot)
  bool defer_run_mapping = false;  // kvm_run pages come later, from Vm::map_runs
};

class Vcpu {
 public:
  Vcpu(VcpuFd fd, uint32_t index, ks_hcall_page* page)
      : fd_(std::move(fd)), index_(index), page_(page) {}
  uint32_t index() const { return index_; }
  VcpuFd& fd() { return fd_; }
  // Guest-published counters: read racily by design (the guest writes them without exiting).
  uint64_t progress() const { return __atomic_load_n(&page_->progress, __ATOMIC_RELAXED); }
  uint64_t metric(unsigned slot) const {
    return __atomic_load_n(&page_->metrics[slot], __ATOMIC_RELAXED);
  }
  void set_hcall_result(int64_t v) { __atomic_store_n(&page_->ret, v, __ATOMIC_RELAXED); }
  ks_hcall_page& page() { return *page_; }

  VcpuStats stats;      // owned by whichever thread runs this vCPU
  bool exited = false;  // the guest called exit on this vCPU
  int64_t exit_code = 0;

  // The thread inside KVM_RUN on this vCPU (0: none). Set at entry, cleared at exit: a second
  // thread entering meanwhile is a scheduler bug (Vm::double_runs()).
  std::atomic<int> runner{0};

 private:
  VcpuFd fd_;
  uint32_t index_;
  ks_hcall_page* page_;
};

enum class VmState { Running, Exited, Crashed };

// How exit handlers on a pCPU reach the VM's memory: the pCPU's software TLB, the safe point that
// answers its pending flushes, and the VM's p2m (epochs and page references; sched::P2m). Each
// may be null.
struct PcpuAccess {
  mm::SoftTlb* tlb = nullptr;
  const std::function<void()>* safe_point = nullptr;
  mm::P2mView* p2m = nullptr;
};

class Vm {
 public:
  // Creates the KVM VM, its memslots and vCPUs, and writes the boot state. The VM fd is closed
  // once the vCPUs exist (they hold the VM), so a VM costs one fd per vCPU. Throws KvmError or
  // std::invalid_argument.
  Vm(const KvmSystem& kvm, Backend backend, const VmSpec& spec, VmPlacement placement = {});
  // With defer_run_mapping: maps vCPU i's kvm_run page at slot first_slot + i of `area`, before
  // the first run.
  void map_runs(RunArea& area, size_t first_slot);

  uint32_t index() const { return spec_.index; }
  uint32_t nr_vcpus() const { return static_cast<uint32_t>(vcpus_.size()); }
  Vcpu& vcpu(uint32_t i) { return *vcpus_[i]; }
  const Vcpu& vcpu(uint32_t i) const { return *vcpus_[i]; }
  const mm::GuestMemory& memory() const { return *mem_; }
  const ConsoleLog& console() const { return console_; }
  uint64_t create_ns() const { return create_ns_; }
  int fd_count() const { return static_cast<int>(vcpus_.size()); }

  // One KVM_RUN of `v` on the calling thread, and what to do about the exit.
  Action run_once(Vcpu& v, Kicker& kicker, PcpuAccess access = {});

  // Entries into KVM_RUN refused because another thread was inside it on the same vCPU. Always
  // 0 unless an executor hands one vCPU to two threads; Debug builds abort instead.
  uint64_t double_runs() const { return double_runs_.load(std::memory_order_relaxed); }

  // First reason wins. Returns true if this call crashed the VM.
  bool crash(const std::string& reason);
  // Records a vCPU's exit; returns true when it was the VM's last running vCPU.
  bool vcpu_exited(Vcpu& v, int64_t code);
  VmState state() const { return state_.load(std::memory_order_acquire); }
  bool stopped() const { return state() != VmState::Running; }
  std::string crash_reason() const;
  int64_t exit_code() const;
  // Not empty once KVM_RUN itself failed for one of its vCPUs (the host's failure, not the
  // guest's: the VM is crashed with this reason and the run fails).
  std::string host_error() const;
  // host_error() is not empty; lock-free, for watching thousands of VMs.
  bool failed_on_host() const { return failed_on_host_.load(std::memory_order_acquire); }

 private:
  Action handle_exit(Vcpu& v, PcpuAccess access);
  Action host_failure(const std::string& what);

  VmSpec spec_;
  std::unique_ptr<mm::GuestMemory> mem_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  ConsoleLog console_;
  uint64_t create_ns_ = 0;
  std::atomic<VmState> state_{VmState::Running};
  std::atomic<uint32_t> running_vcpus_;
  std::atomic<uint64_t> double_runs_{0};
  std::atomic<bool> failed_on_host_{false};
  mutable std::mutex fate_mu_;
  std::string crash_reason_, host_error_;
  int64_t exit_code_ = 0;
};

}  // namespace kvmscale::vmm
