// Scheduler benchmarks, each against a baseline measured in the same run:
//   1. vCPU switch on one pCPU (credit decision + KVM_RUN of the other vCPU) vs a bare loop
//      alternating KVM_RUN between two vCPUs; both guests yield at every step.
//   2. scheduler overhead (tick + accounting + schedule with balancing) as a share of pCPU time
//      with many idle-ish vCPUs (blocking with a timeout, waking, blocking again).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>

#include "app/testbed.hpp"
#include "bench/bench_common.hpp"
#include "guests/include/kvmscale_abi.h"
#include "vmm/clock.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/kick.hpp"
#include "vmm/vm.hpp"

using namespace kvmscale;
using bench::median;
using nlohmann::json;

namespace {

// Bare: one thread alternates KVM_RUN between vCPU 0 of two VMs running hcbench in yield mode.
double raw_switch_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, uint64_t n) {
  vmm::VmSpec spec;
  spec.mem_size = 8ull << 20;
  spec.image = vmm::builtin_guest_image("hcbench");
  spec.guest_args = {n, 1};
  std::unique_ptr<vmm::Vm> vms[2];
  for (int i = 0; i < 2; i++) {
    spec.index = uint32_t(i);
    vms[i] = std::make_unique<vmm::Vm>(kvm, backend, spec);
  }
  bool done[2] = {false, false};
  for (int turn = 0; !(done[0] && done[1]); turn ^= 1) {
    if (done[turn]) continue;
    vmm::Vcpu& v = vms[turn]->vcpu(0);
    if (v.fd().run() != 0) continue;
    ks_hcall_page& page = v.page();
    if (page.op == KS_HC_EXIT) done[turn] = true;
    page.ret = page.op == KS_HC_CLOCK ? int64_t(now_ns()) : 0;
  }
  // Each guest timed its own loop, which spans both guests' steps: 2n switches.
  return double(std::max(vms[0]->vcpu(0).metric(1), vms[1]->vcpu(0).metric(1))) / double(2 * n);
}

double kvmscale_switch_ns(uint64_t n) {
  app::RunConfig c;
  c.guest = "hcbench";
  c.vms = 2;
  c.vcpus = 1;
  c.mem = 8ull << 20;
  c.guest_args = {n, 1};
  c.sched = "credit";
  c.pcpus = 1;
  c.balance = "none";
  c.ratelimit_ns = 0;  // 4.7's ratelimit ignores yield: without this, most yields would not switch
  json r = app::run_testbed(c);
  uint64_t ns = std::max(r["vms"][0]["metrics"]["hcall_ns"].get<uint64_t>(),
                         r["vms"][1]["metrics"]["hcall_ns"].get<uint64_t>());
  return double(ns) / double(2 * n);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvmscale scheduler benchmarks (ratios to same-run baselines)"};
  int reps = 5;
  uint64_t switches = 2000;
  uint32_t idle_vms = 250, idle_vcpus = 4;
  std::string idle_duration = "5s";
  std::vector<std::string> lock_list = {"ticket", "spin-yield"};
  app.add_option("--reps", reps)->check(CLI::Range(1, 100));
  app.add_option("--switches", switches, "yields per guest per repetition")
      ->check(CLI::Range(10, 1000000));
  app.add_option("--idle-vms", idle_vms)->check(CLI::Range(1, 5000));
  app.add_option("--idle-vcpus", idle_vcpus)->check(CLI::Range(1, 64));
  app.add_option("--idle-duration", idle_duration);
  app.add_option("--locks", lock_list, "lock strategies to measure the overhead with")
      ->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  auto kvm = bench::open_kvm_for_bench("bench_sched");
  if (!kvm) return 1;
  vmm::Backend backend = vmm::detect_backend();

  std::vector<double> ours, raw;
  for (int r = 0; r < reps; r++) {
    ours.push_back(kvmscale_switch_ns(switches));
    raw.push_back(raw_switch_ns(*kvm, backend, switches));
  }
  double o = median(ours), b = median(raw);
  std::printf("backend %s, %d repetitions, medians\n", vmm::backend_name(backend), reps);
  std::printf(
      "vCPU switch (yield) on one pCPU: kvmscale credit %.0f ns, raw alternating KVM_RUN "
      "%.0f ns, ratio %.3f (target <= 1.25)\n",
      o, b, o / b);

  for (const auto& lock : lock_list) {
    app::RunConfig c;
    c.guest = "idle";
    c.vms = idle_vms;
    c.vcpus = idle_vcpus;
    c.mem = 8ull << 20;
    c.guest_args = {500'000'000};  // block 500 ms at a time
    c.sched = "credit";
    c.lock = lock;
    c.duration_ns = app::parse_duration_ns(idle_duration);
    json rec = app::run_testbed(c);
    const json& s = rec["sched"];
    uint64_t wakes = 0, busy = 0;
    for (const auto& v : s["vcpus"]) wakes += v["wakes"].get<uint64_t>();
    for (const auto& p : s["pcpus"]) busy += p["busy_ns"].get<uint64_t>();
    const json& runq = rec["locks"]["classes"]["runq"];
    std::printf(
        "scheduler overhead, %u idle-ish vCPUs on %zu pCPUs, --lock %s: %.3f%% of pCPU "
        "time (target < 1%%); guest time %.1f%%, %llu wakes; runq lock waits %.1f ms "
        "(max %.1f us)\n",
        idle_vms * idle_vcpus, s["pcpus"].size(), lock.c_str(),
        s["sched_overhead"].get<double>() * 100,
        100.0 * double(busy) / (double(s["wall_ns"].get<uint64_t>()) * double(s["pcpus"].size())),
        static_cast<unsigned long long>(wakes), runq["wait_ns"].get<double>() / 1e6,
        runq["wait_max_ns"].get<double>() / 1e3);
  }
  return 0;
}
