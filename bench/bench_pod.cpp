// Populate-on-demand and cross-call benchmarks, each against a baseline measured in the same run:
//   1. populate rate: a boot-zero guest populating its RAM through kvmscale's FaultService
//      (io_uring, PoD policy, stall bookkeeping) vs a bare blocking read + UFFDIO_ZEROPAGE loop
//      serving the same guest;
//   2. zero-check throughput: the PoD zero check vs memcmp against a zero page;
//   3. cross-call round trip to a pCPU in guest mode vs a bare signal kick + ack.
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstring>
#include <thread>

#include "bench/bench_common.hpp"
#include "guests/include/kvmscale_abi.h"
#include "locks/registry.hpp"
#include "mm/pod_vm.hpp"
#include "mm/userfaultfd.hpp"
#include "sched/cross_call.hpp"
#include "vmm/clock.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/vm.hpp"

using namespace kvmscale;
using bench::median;
using nlohmann::json;

namespace {

// ns per populated 4 KiB page: guest boot-zero served by a bare uffd loop.
double raw_populate_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, uint64_t mem) {
  vmm::VmSpec spec;
  spec.mem_size = mem;
  spec.image = vmm::builtin_guest_image("boot-zero");
  vmm::Vm vm(kvm, backend, spec);
  mm::Userfaultfd uffd;
  uint8_t* ram = vm.memory().host_base() + KS_RAM_GPA;
  const uint64_t len = mem - KS_RAM_GPA;
  uffd.register_range(ram, len);
  std::atomic<bool> stop{false};
  std::thread server([&] {
    while (!stop.load()) {
      pollfd p{uffd.fd(), POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      uffd_msg m;
      if (read(uffd.fd(), &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT) continue;
      uffd.zeropage(m.arg.pagefault.address & ~4095ull, 4096);
    }
  });
  vmm::Kicker k;
  k.bind_current_thread();
  uint64_t t0 = now_ns();
  for (;;) {
    auto a = vm.run_once(vm.vcpu(0), k);
    if (a.kind == vmm::Action::Kind::Exit || a.kind == vmm::Action::Kind::Crash) break;
  }
  uint64_t boot = vm.vcpu(0).stats.boot_done_ns - t0;
  stop.store(true);
  server.join();
  uffd.unregister_range(ram, len);
  return double(boot) / double(len / 4096);
}

double kvmscale_populate_ns(uint64_t mem) {
  vmm::RunConfig c;
  c.guest = "boot-zero";
  c.vms = 1;
  c.vcpus = 1;
  c.mem = mem;
  c.pod_target = "100%";  // populate only: the policy runs, nothing needs reclaiming
  json r = vmm::run_testbed(c);
  return r["vms"][0]["boot_ns"].get<double>() / double((mem - KS_RAM_GPA) / 4096);
}

// GB/s over `mb` MiB of zeros.
std::pair<double, double> zero_check_gbps(uint64_t mb) {
  std::vector<uint8_t> buf(mb << 20, 0);
  static const uint8_t zero[4096] = {};
  uint64_t ok = 0;
  uint64_t t0 = now_ns();
  for (uint64_t off = 0; off < buf.size(); off += 4096) ok += mm::is_zero(buf.data() + off, 4096);
  uint64_t t1 = now_ns();
  for (uint64_t off = 0; off < buf.size(); off += 4096)
    ok += std::memcmp(buf.data() + off, zero, 4096) == 0;
  uint64_t t2 = now_ns();
  if (ok != 2 * buf.size() / 4096) std::fprintf(stderr, "zero check disagrees\n");
  return {double(buf.size()) / double(t1 - t0), double(buf.size()) / double(t2 - t1)};
}

// A thread running a spin guest. Raw: the initiator kicks, the thread counts the EINTR as the
// ack. kvmscale: the thread serves a CrossCall after every KVM_RUN return.
struct SpinTarget {
  SpinTarget(const vmm::KvmSystem& kvm, vmm::Backend backend) {
    vmm::VmSpec spec;
    spec.mem_size = 8ull << 20;
    spec.image = vmm::builtin_guest_image("spin");
    spec.guest_args = {1ull << 40};  // long chunks: exits only when kicked
    vm = std::make_unique<vmm::Vm>(kvm, backend, spec);
  }
  void run(sched::CrossCall* cc) {
    kicker.bind_current_thread();
    ready.store(true);
    while (!stop.load()) {
      vm->run_once(vm->vcpu(0), kicker);
      acks.fetch_add(1);
      if (cc) cc->serve(0);
    }
  }
  std::unique_ptr<vmm::Vm> vm;
  vmm::Kicker kicker;
  std::atomic<bool> ready{false}, stop{false};
  std::atomic<uint64_t> acks{0};
};

double raw_kick_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, int n) {
  SpinTarget t(kvm, backend);
  std::thread th([&] { t.run(nullptr); });
  while (!t.ready.load()) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::vector<double> s;
  for (int i = 0; i < n; i++) {
    uint64_t before = t.acks.load(), t0 = now_ns();
    t.kicker.kick();
    while (t.acks.load() == before) locks::cpu_relax();
    s.push_back(double(now_ns() - t0));
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // let it re-enter
  }
  t.stop.store(true);
  t.kicker.kick();
  th.join();
  return median(s);
}

double cross_call_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, int n) {
  SpinTarget t(kvm, backend);
  locks::LockRegistry locks(locks::LockPolicy::parse("ticket", {}));
  sched::CrossCall cc(1, sched::CallLockMode::Global, locks, [&](uint32_t) { t.kicker.kick(); });
  std::thread th([&] { t.run(&cc); });
  while (!t.ready.load()) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::vector<double> s;
  for (int i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    cc.on_selected_cpus(sched::CpuSet(1, true), [](uint32_t) {}, -1);
    s.push_back(double(now_ns() - t0));
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  t.stop.store(true);
  t.kicker.kick();
  th.join();
  return median(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvmscale populate-on-demand and cross-call benchmarks (same-run baselines)"};
  int reps = 3, kicks = 300;
  std::string mem_text = "64M";
  app.add_option("--reps", reps)->check(CLI::Range(1, 50));
  app.add_option("--mem", mem_text, "guest memory for the populate runs");
  app.add_option("--kicks", kicks, "round trips per cross-call measurement")->check(CLI::Range(10, 100000));
  CLI11_PARSE(app, argc, argv);
  auto kvm = bench::open_kvm_for_bench("bench_pod");
  if (!kvm) return 1;
  vmm::Backend backend = vmm::detect_backend();
  uint64_t mem = vmm::parse_size(mem_text);

  std::vector<double> ours, raw, zc, mc, cc, sig;
  for (int r = 0; r < reps; r++) {
    ours.push_back(kvmscale_populate_ns(mem));
    raw.push_back(raw_populate_ns(*kvm, backend, mem));
    auto [z, m] = zero_check_gbps(256);
    zc.push_back(z);
    mc.push_back(m);
    cc.push_back(cross_call_ns(*kvm, backend, kicks));
    sig.push_back(raw_kick_ns(*kvm, backend, kicks));
  }
  std::printf("backend %s, %d repetitions, medians\n", vmm::backend_name(backend), reps);
  double o = median(ours), b = median(raw);
  std::printf("populate: kvmscale %.1f us/page (%.0f pages/s), raw uffd loop %.1f us/page (%.0f "
              "pages/s): rate ratio %.3f (target >= 0.8)\n",
              o / 1e3, 1e9 / o, b / 1e3, 1e9 / b, b / o);
  std::printf("zero check: PoD is_zero %.1f GB/s, memcmp vs zero page %.1f GB/s: ratio %.2f\n",
              median(zc), median(mc), median(zc) / median(mc));
  std::printf("cross-call round trip to a pCPU in guest mode: %.1f us, raw signal kick + ack "
              "%.1f us: ratio %.2f\n",
              median(cc) / 1e3, median(sig) / 1e3, median(cc) / median(sig));
  return 0;
}
