// The hypercall ABI on the VMM side (docs/hypercalls.md): validates a guest's request from its
// hypercall page and says what the executor must do next. Needs no KVM, so it is unit-tested.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include "guests/include/kvmscale_abi.h"
#include "mm/guest_view.hpp"

namespace kvmscale::vmm {

// What the executor does with a vCPU after an exit.
struct Action {
  enum class Kind { Resume, Kicked, Yield, Block, Wake, Exit, Crash };
  Kind kind = Kind::Resume;
  uint64_t value = 0;  // Block: timeout ns (0 = none); Wake: target vCPU; Exit: code
  std::string reason;  // Crash
  static Action crash(std::string why) { return {Kind::Crash, 0, std::move(why)}; }
};

inline constexpr int kExitReasonSlots = 40;

// Counters of one vCPU. Written only by the thread running the vCPU; read after the run.
struct VcpuStats {
  uint64_t runs = 0;                                  // KVM_RUN calls
  uint64_t run_ns = 0;                                // time inside KVM_RUN
  uint64_t kicks = 0;                                 // KVM_RUN returns caused by a kick
  std::array<uint64_t, kExitReasonSlots> exits{};     // by KVM_EXIT_* reason
  std::array<uint64_t, KS_HC_OP_COUNT + 1> hcalls{};  // by op; last slot: unknown ops
  uint64_t hcall_errors = 0;
  uint64_t boot_done_ns = 0;  // CLOCK_MONOTONIC when the guest reported boot done (0 = never)
  std::array<std::string, KS_METRIC_SLOTS> metric_names{};
};

// A VM's console output: every vCPU appends; capped so a chatty guest cannot exhaust memory.
class ConsoleLog {
 public:
  static constexpr size_t kCap = 16384;
  explicit ConsoleLog(bool echo_to_stderr = false, std::string prefix = {})
      : echo_(echo_to_stderr), prefix_(std::move(prefix)) {}
  void write(std::string_view text);
  std::string text() const;
  uint64_t dropped() const;

 private:
  mutable std::mutex mu_;
  std::string text_;
  uint64_t dropped_ = 0;
  bool echo_;
  std::string prefix_;
};

const char* exit_reason_name(uint32_t reason);
const char* hcall_name(uint64_t op);

// Performs the hypercall found in `page` for vCPU `vcpu` of a VM with `nr_vcpus` vCPUs and writes
// its return value into page.ret (except Block, whose result the executor stores when it ends).
Action dispatch_hypercall(const mm::GuestView& mem, ks_hcall_page& page, uint32_t vcpu,
                          uint32_t nr_vcpus, VcpuStats& stats, ConsoleLog& console);

}  // namespace kvmscale::vmm
