#include "vmm/hypercall.hpp"

#include <linux/kvm.h>
#include <unistd.h>

#include "locks/probe.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::vmm {

namespace {
// What the terminal gets of a guest's console bytes: printable ASCII, newline and tab as they are,
// every other byte as \xNN, so a hostile guest cannot send the user's terminal escape sequences
// (the record keeps the bytes as written).
void append_printable(std::string& out, std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  for (unsigned char c : text) {
    if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t') {
      out.push_back(char(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
}
}  // namespace

void ConsoleLog::write(std::string_view text) {
  std::lock_guard lock(mu_);
  size_t room = text_.size() < kCap ? kCap - text_.size() : 0;
  size_t take = std::min(room, text.size());
  text_.append(text.substr(0, take));
  dropped_ += text.size() - take;
  if (echo_) {
    std::string line = prefix_;
    append_printable(line, text);
    ssize_t ignored = ::write(2, line.data(), line.size());
    (void)ignored;
  }
}

std::string ConsoleLog::text() const {
  std::lock_guard lock(mu_);
  return text_;
}

uint64_t ConsoleLog::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

const char* exit_reason_name(uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_UNKNOWN: return "unknown";
    case KVM_EXIT_EXCEPTION: return "exception";
    case KVM_EXIT_IO: return "io";
    case KVM_EXIT_HYPERCALL: return "hypercall";
    case KVM_EXIT_DEBUG: return "debug";
    case KVM_EXIT_HLT: return "hlt";
    case KVM_EXIT_MMIO: return "mmio";
    case KVM_EXIT_IRQ_WINDOW_OPEN: return "irq_window_open";
    case KVM_EXIT_SHUTDOWN: return "shutdown";
    case KVM_EXIT_FAIL_ENTRY: return "fail_entry";
    case KVM_EXIT_INTR: return "intr";
    case KVM_EXIT_NMI: return "nmi";
    case KVM_EXIT_INTERNAL_ERROR: return "internal_error";
    case KVM_EXIT_SYSTEM_EVENT: return "system_event";
    case KVM_EXIT_X86_RDMSR: return "rdmsr";
    case KVM_EXIT_X86_WRMSR: return "wrmsr";
    default: return "other";
  }
}

const char* hcall_name(uint64_t op) {
  switch (op) {
    case KS_HC_NOP: return "nop";
    case KS_HC_CONSOLE: return "console";
    case KS_HC_BOOT_DONE: return "boot_done";
    case KS_HC_YIELD: return "yield";
    case KS_HC_BLOCK: return "block";
    case KS_HC_WAKE: return "wake";
    case KS_HC_EXIT: return "exit";
    case KS_HC_CLOCK: return "clock";
    case KS_HC_METRIC_NAME: return "metric_name";
    default: return "unknown";
  }
}

namespace {

// One hypercall, its arguments read once; `result` gets what the guest is returned (0 for an
// op that returns nothing).
Action run_hypercall(const mm::GuestView& mem, ks_hcall_page& page, uint32_t vcpu,
                     uint32_t nr_vcpus, VcpuStats& stats, ConsoleLog& console, uint64_t op,
                     uint64_t a0, uint64_t a1, int64_t& result) {
  (void)vcpu;  // only the boot-done probe reports it
  auto ret = [&](int64_t v) {
    if (v < 0) stats.hcall_errors++;
    __atomic_store_n(&page.ret, v, __ATOMIC_RELAXED);
    result = v;
    return Action{};
  };
  switch (op) {
    case KS_HC_NOP: return ret(0);
    case KS_HC_CONSOLE: {
      if (a1 > KS_CONSOLE_MAX) return ret(KS_EINVAL);
      const uint8_t* p = mem.translate(a0, a1);
      if (p == nullptr) return ret(KS_EFAULT);
      console.write(std::string_view(reinterpret_cast<const char*>(p), a1));
      return ret(static_cast<int64_t>(a1));
    }
    case KS_HC_BOOT_DONE:
      if (stats.boot_done_ns == 0) {
        stats.boot_done_ns = now_ns();
        KS_PROBE(vm_boot_done, mem.vm(), vcpu, stats.boot_done_ns);
      }
      return ret(0);
    case KS_HC_YIELD: ret(0); return {Action::Kind::Yield};
    case KS_HC_BLOCK: return {Action::Kind::Block, a0};
    case KS_HC_WAKE:
      if (a0 >= nr_vcpus) return ret(KS_EINVAL);
      ret(0);
      return {Action::Kind::Wake, a0};
    case KS_HC_EXIT: return {Action::Kind::Exit, a0};
    case KS_HC_CLOCK: return ret(static_cast<int64_t>(now_ns()));
    case KS_HC_METRIC_NAME: {
      if (a0 >= KS_METRIC_SLOTS) return ret(KS_EINVAL);
      char name[KS_METRIC_NAME_MAX];
      auto len = mem.read_cstring(a1, name);
      if (!len) return ret(mem.translate(a1, 1) ? KS_EINVAL : KS_EFAULT);
      if (*len == 0) return ret(KS_EINVAL);
      for (size_t i = 0; i < *len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok) return ret(KS_EINVAL);
      }
      stats.metric_names[a0].assign(name, *len);
      return ret(0);
    }
    default: return ret(KS_ENOSYS);
  }
}

}  // namespace

Action dispatch_hypercall(const mm::GuestView& mem, ks_hcall_page& page, uint32_t vcpu,
                          uint32_t nr_vcpus, VcpuStats& stats, ConsoleLog& console) {
  // Read each argument once: the guest (another vCPU of it) may rewrite the page meanwhile.
  const uint64_t op = __atomic_load_n(&page.op, __ATOMIC_RELAXED);
  const uint64_t a0 = __atomic_load_n(&page.args[0], __ATOMIC_RELAXED);
  const uint64_t a1 = __atomic_load_n(&page.args[1], __ATOMIC_RELAXED);
  constexpr uint64_t kUnknownOp = KS_HC_OP_COUNT;
  stats.hcalls[op < kUnknownOp ? op : kUnknownOp]++;
  KS_PROBE(hcall_entry, mem.vm(), vcpu, op, a0, a1);
  int64_t result = 0;
  Action a = run_hypercall(mem, page, vcpu, nr_vcpus, stats, console, op, a0, a1, result);
  KS_PROBE(hcall_exit, mem.vm(), vcpu, op, result, int(a.kind));
  return a;
}

}  // namespace kvmscale::vmm
