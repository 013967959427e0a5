// Populate-on-demand and cross-call benchmarks, each against a baseline measured in the same run
// (repetitions interleaved, medians):
//   1. populate rate: a thread writing every page of a fresh userfaultfd region served by
//      kvmscale's PoD path (FaultService io_uring loop + PodVm policy, target = all) vs a bare
//      poll + read + UFFDIO_ZEROPAGE loop on the same region;
//   2. zero-check throughput: the PoD zero check vs memcmp against a zero page and a
//      memchr-style scan;
//   3. cross-call round trip to a thread in guest mode (KVM_RUN of a spinning guest) vs a bare
//      signal kick and ack of the same thread.
// A watchdog (alarm) ends the process if anything hangs; every wait loop also has a deadline.
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "bench/bench_common.hpp"
#include "locks/registry.hpp"
#include "mm/fault_service.hpp"
#include "mm/pod_vm.hpp"
#include "mm/userfaultfd.hpp"
#include "sched/cross_call.hpp"
#include "sched/p2m.hpp"
#include "vmm/backend.hpp"
#include "vmm/clock.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/vm.hpp"

using namespace kvmscale;
using bench::median;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kDeadlineNs = 10'000'000'000ull;  // no single wait may take longer

struct Region {
  explicit Region(uint64_t len) : len(len) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    base = static_cast<uint8_t*>(p);
  }
  ~Region() { munmap(base, len); }
  // Every page written once (the guest's boot-time zeroing); returns ns per page.
  double touch_all() const {
    uint64_t t0 = now_ns();
    for (uint64_t off = 0; off < len; off += kPage) base[off] = 1;
    return double(now_ns() - t0) / double(len / kPage);
  }
  uint8_t* base;
  uint64_t len;
};

double raw_populate_ns(Region& r) {
  madvise(r.base, r.len, MADV_DONTNEED);
  mm::Userfaultfd uffd;
  uffd.register_range(r.base, r.len);
  std::atomic<bool> stop{false};
  std::thread server([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      pollfd p{uffd.fd(), POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      uffd_msg m;
      if (read(uffd.fd(), &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT) continue;
      uffd.zeropage(m.arg.pagefault.address & ~(kPage - 1), kPage);
    }
  });
  double ns = r.touch_all();
  stop.store(true);
  server.join();
  uffd.unregister_range(r.base, r.len);
  return ns;
}

double kvmscale_populate_ns(Region& r) {
  madvise(r.base, r.len, MADV_DONTNEED);
  mm::Userfaultfd uffd;
  locks::LockRegistry locks(locks::LockPolicy::parse("ticket", {}));
  mm::PodParams pp;
  pp.target = r.len / kPage;       // populate only: the policy runs, nothing needs reclaiming
  sched::P2m p2m(0, {}, nullptr);  // no contexts: nothing holds the VM's translations
  mm::PodVm pod(r.base, r.len, kPage, pp, uffd, locks.make("pod", "pod"), p2m);
  p2m.attach_pod(pod, nullptr);
  double ns;
  {
    mm::FaultService service(uffd, 1, [&](const mm::FaultEvent& ev) { pod.handle(ev); });
    ns = r.touch_all();
  }
  if (pod.report()["populates"].get<uint64_t>() != r.len / kPage)
    throw std::runtime_error("kvmscale populate path missed pages");
  return ns;
}

// GB/s of each zero check over `mb` MiB of zeros: PoD is_zero, memcmp, memchr-style scan.
std::array<double, 3> zero_check_gbps(uint64_t mb) {
  std::vector<uint8_t> buf(mb << 20, 0);
  static const uint8_t zero[kPage] = {};
  uint64_t ok = 0;
  uint64_t t0 = now_ns();
  for (uint64_t off = 0; off < buf.size(); off += kPage) ok += mm::is_zero(buf.data() + off, kPage);
  uint64_t t1 = now_ns();
  for (uint64_t off = 0; off < buf.size(); off += kPage)
    ok += std::memcmp(buf.data() + off, zero, kPage) == 0;
  uint64_t t2 = now_ns();
  for (uint64_t off = 0; off < buf.size(); off += kPage) {
    // memchr-style: the first non-zero byte, if any (what a byte scan does).
    const uint8_t* p = buf.data() + off;
    size_t i = 0;
    while (i < kPage && p[i] == 0) i++;
    ok += i == kPage;
  }
  uint64_t t3 = now_ns();
  if (ok != 3 * buf.size() / kPage) throw std::runtime_error("zero checks disagree");
  const double bytes = double(buf.size());
  return {bytes / double(t1 - t0), bytes / double(t2 - t1), bytes / double(t3 - t2)};
}

// A thread keeping a spinning guest in guest mode. Every return from KVM_RUN counts as an ack;
// with a CrossCall it serves pending calls there (a safe point), as the executors do.
struct SpinTarget {
  SpinTarget(const vmm::KvmSystem& kvm, vmm::Backend backend, sched::CrossCall* cc) : cc(cc) {
    vmm::VmSpec spec;
    spec.mem_size = 8ull << 20;
    spec.image = vmm::builtin_guest_image("spin");
    spec.guest_args = {1ull << 40};  // one endless chunk: it exits only when kicked
    vm = std::make_unique<vmm::Vm>(kvm, backend, spec);
    thread = std::thread([this] { run(); });
    uint64_t t0 = now_ns();
    while (!ready.load()) {
      if (now_ns() - t0 > kDeadlineNs) throw std::runtime_error("spin target never started");
      std::this_thread::yield();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it reach guest mode
  }
  ~SpinTarget() {
    stop.store(true);
    kicker.kick();
    thread.join();
  }
  void run() {
    kicker.bind_current_thread();
    ready.store(true);
    while (!stop.load()) {
      vmm::Action a = vm->run_once(vm->vcpu(0), kicker);
      if (a.kind == vmm::Action::Kind::Crash || a.kind == vmm::Action::Kind::Exit) break;
      acks.fetch_add(1);
      if (cc) cc->serve(0);
    }
    if (cc) cc->set_stalled(0, true, sched::CrossCall::kGone);
  }
  sched::CrossCall* cc;
  std::unique_ptr<vmm::Vm> vm;
  vmm::Kicker kicker;
  std::atomic<bool> ready{false}, stop{false};
  std::atomic<uint64_t> acks{0};
  std::thread thread;
};

double raw_kick_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, int n) {
  SpinTarget t(kvm, backend, nullptr);
  std::vector<double> s;
  for (int i = 0; i < n; i++) {
    uint64_t before = t.acks.load(), t0 = now_ns();
    t.kicker.kick();
    while (t.acks.load() == before) {
      if (now_ns() - t0 > kDeadlineNs) throw std::runtime_error("raw kick never acked");
      locks::cpu_relax();
    }
    s.push_back(double(now_ns() - t0));
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // back into guest mode
  }
  return median(s);
}

double cross_call_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, int n) {
  locks::LockRegistry locks(locks::LockPolicy::parse("ticket", {}));
  std::atomic<vmm::Kicker*> target{nullptr};
  sched::CrossCall cc(1, sched::CallLockMode::Global, locks, [&](uint32_t) {
    if (vmm::Kicker* k = target.load()) k->kick();
  });
  SpinTarget t(kvm, backend, &cc);
  target.store(&t.kicker);
  std::vector<double> s;
  std::atomic<uint64_t> ran{0};
  for (int i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    cc.on_selected_cpus(
        sched::CpuSet(1, true), [&ran](uint32_t) { ran.fetch_add(1); }, -1);
    s.push_back(double(now_ns() - t0));
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (ran.load() != uint64_t(n)) throw std::runtime_error("cross-calls were not all run");
  return median(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvmscale populate-on-demand and cross-call benchmarks (same-run baselines)"};
  int reps = 5, kicks = 300, watchdog_s = 600;
  std::string mem_text = "64M";
  app.add_option("--reps", reps, "interleaved repetitions")->check(CLI::Range(1, 50));
  app.add_option("--mem", mem_text, "region populated per measurement");
  app.add_option("--kicks", kicks, "round trips per cross-call measurement")
      ->check(CLI::Range(10, 100000));
  app.add_option("--watchdog", watchdog_s, "seconds before the benchmark gives up (SIGALRM)");
  CLI11_PARSE(app, argc, argv);
  alarm(unsigned(watchdog_s));  // default action: terminate; a hang must never outlive this
  try {
    const uint64_t mem = app::parse_size(mem_text);
    auto kvm = bench::open_kvm_for_bench("bench_pod (cross-call part)");
    vmm::Backend backend = vmm::detect_backend();
    Region region(mem);
    std::vector<double> ours, raw, zc, mc, scan, cc, sig;
    for (int r = 0; r < reps; r++) {
      // Alternate which goes first so warm-up and drift do not favour one side.
      if (r % 2) raw.push_back(raw_populate_ns(region));
      ours.push_back(kvmscale_populate_ns(region));
      if (r % 2 == 0) raw.push_back(raw_populate_ns(region));
      auto z = zero_check_gbps(256);
      zc.push_back(z[0]);
      mc.push_back(z[1]);
      scan.push_back(z[2]);
      if (kvm) {
        cc.push_back(cross_call_ns(*kvm, backend, kicks));
        sig.push_back(raw_kick_ns(*kvm, backend, kicks));
      }
    }
    std::printf("backend %s, %d repetitions, medians\n", kvm ? vmm::backend_name(backend) : "none",
                reps);
    const double o = median(ours), b = median(raw);
    std::printf(
        "populate (%s, write-touch per page): kvmscale %.2f us/page (%.0f pages/s), raw "
        "uffd loop %.2f us/page (%.0f pages/s): rate ratio %.3f (target >= 0.8)\n",
        mem_text.c_str(), o / 1e3, 1e9 / o, b / 1e3, 1e9 / b, b / o);
    std::printf(
        "zero check: PoD is_zero %.1f GB/s, memcmp vs zero page %.1f GB/s, byte scan "
        "%.1f GB/s: ratios %.2f, %.2f\n",
        median(zc), median(mc), median(scan), median(zc) / median(mc), median(zc) / median(scan));
    if (kvm)
      std::printf(
          "cross-call round trip to a thread in guest mode: %.1f us, raw signal kick + "
          "ack %.1f us: ratio %.2f (target <= 1.25)\n",
          median(cc) / 1e3, median(sig) / 1e3, median(cc) / median(sig));
    else
      std::printf("cross-call: skipped (no /dev/kvm)\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_pod: %s\n", e.what());
    return 1;
  }
  return 0;
}
