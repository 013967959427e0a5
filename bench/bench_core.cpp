// Core benchmarks, each against a baseline measured in the same run (medians of interleaved
// repetitions; this machine is noisy):
//   1. guest busy loop vs the same loop on the host             (native execution)
//   2. hypercall round trip through kvmscale vs a bare KVM_RUN loop on the PIO exit
//   3. launch-to-boot-done of N VMs through kvmscale vs bare sequential create+run
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "app/record.hpp"
#include "app/testbed.hpp"
#include "bench/bench_common.hpp"
#include "guests/include/ks_loop.h"
#include "guests/include/kvmscale_abi.h"
#include "vmm/boot.hpp"
#include "vmm/clock.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/kick.hpp"
#include "vmm/vm.hpp"

using namespace kvmscale;
using bench::median;
using nlohmann::json;

namespace {

app::RunConfig one_vm(const std::string& guest, std::vector<uint64_t> args) {
  app::RunConfig c;
  c.guest = guest;
  c.vms = 1;
  c.vcpus = 1;
  c.mem = 8ull << 20;
  c.guest_args = std::move(args);
  return c;
}

uint64_t guest_metric(const json& r, const char* name) {
  return r["vms"][0]["metrics"][name].get<uint64_t>();
}

// Bare baseline: KVM_RUN in a loop, answering only what hcbench needs (clock, exit).
uint64_t raw_hcall_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, uint64_t n) {
  vmm::VmSpec spec;
  spec.mem_size = 8ull << 20;
  spec.image = vmm::builtin_guest_image("hcbench");
  spec.guest_args = {n};
  vmm::Vm vm(kvm, backend, spec);  // reuses the boot state only; the loop below is bare
  vmm::Vcpu& v = vm.vcpu(0);
  kvm_run* run = v.fd().run_state();
  ks_hcall_page& page = v.page();
  for (;;) {
    if (v.fd().run() != 0) continue;
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != KS_DOORBELL_PORT) {
      std::fprintf(stderr, "raw loop: unexpected exit %u\n", run->exit_reason);
      return 0;
    }
    if (page.op == KS_HC_EXIT) break;
    page.ret = page.op == KS_HC_CLOCK ? int64_t(now_ns()) : 0;
  }
  return v.metric(1);
}

// Bare baseline: create and boot `vms` VMs one after another, each run until its boot-done
// hypercall; returns ns from start to the last boot done.
uint64_t raw_launch_ns(const vmm::KvmSystem& kvm, vmm::Backend backend, uint32_t vms) {
  struct Bare {
    std::unique_ptr<mm::GuestMemory> mem;
    std::unique_ptr<vmm::VmFd> vm;
    std::unique_ptr<vmm::VcpuFd> vcpu;
  };
  std::vector<Bare> all;
  auto image = vmm::builtin_guest_image("hello");
  uint64_t t0 = now_ns();
  for (uint32_t i = 0; i < vms; i++) {
    Bare b;
    b.mem = std::make_unique<mm::GuestMemory>(8ull << 20);
    b.vm = std::make_unique<vmm::VmFd>(kvm.create_vm());
    vmm::BootParams bp;
    bp.vm_index = i;
    bp.image = image;
    vmm::write_boot_area(*b.mem, bp);
    b.vm->set_memory_region(0, 0, b.mem->size(), b.mem->host_base());
    b.vcpu = std::make_unique<vmm::VcpuFd>(b.vm->create_vcpu(0));
    vmm::setup_vcpu(*b.vcpu, 0, backend, kvm.supported_cpuid());
    auto& page = *b.mem->object_at<ks_hcall_page>(KS_HCALL_GPA);
    for (;;) {
      if (b.vcpu->run() != 0) continue;
      if (b.vcpu->run_state()->exit_reason != KVM_EXIT_IO) return 0;
      if (page.op == KS_HC_BOOT_DONE) break;
      page.ret = 0;
    }
    all.push_back(std::move(b));
  }
  return now_ns() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvmscale core benchmarks: each printed as a ratio to a same-run baseline"};
  int reps = 5;
  uint64_t loop_iters = 1ull << 28, hcalls = 4000;
  uint32_t vms = 200;
  std::string json_out;
  app.add_option("--reps", reps, "interleaved repetitions (medians are reported)")
      ->check(CLI::Range(1, 100));
  app.add_option("--loop-iters", loop_iters, "busy-loop iterations")
      ->check(CLI::Range(1000, 1 << 30));
  app.add_option("--hcalls", hcalls, "hypercalls per repetition")->check(CLI::Range(10, 1000000));
  app.add_option("--vms", vms, "VMs launched per repetition")->check(CLI::Range(1, 5000));
  app.add_option("--json", json_out, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  auto kvm = bench::open_kvm_for_bench("bench_core");
  if (!kvm) return 1;
  vmm::Backend backend = vmm::detect_backend();

  std::vector<double> guest_loop, host_loop, ks_hc, raw_hc, ks_launch, raw_launch;
  for (int r = 0; r < reps; r++) {
    json rec = app::run_testbed(one_vm("loop", {loop_iters}));
    guest_loop.push_back(double(guest_metric(rec, "loop_ns")) / double(loop_iters));
    uint64_t t0 = now_ns();
    ks_busy_loop(loop_iters);
    host_loop.push_back(double(now_ns() - t0) / double(loop_iters));

    rec = app::run_testbed(one_vm("hcbench", {hcalls}));
    ks_hc.push_back(double(guest_metric(rec, "hcall_ns")) / double(hcalls));
    raw_hc.push_back(double(raw_hcall_ns(*kvm, backend, hcalls)) / double(hcalls));

    app::RunConfig lc = one_vm("hello", {});
    lc.vms = vms;
    rec = app::run_testbed(lc);
    if (rec["summary"]["vms_booted"] != vms) {
      std::fprintf(stderr, "launch: only %s of %u VMs booted\n",
                   rec["summary"]["vms_booted"].dump().c_str(), vms);
      return 1;
    }
    ks_launch.push_back(double(rec["summary"]["create_wall_ns"].get<uint64_t>() +
                               rec["summary"]["boot_ns"]["max"].get<uint64_t>()));
    raw_launch.push_back(double(raw_launch_ns(*kvm, backend, vms)));
    std::fprintf(stderr, "rep %d/%d done\n", r + 1, reps);
  }

  struct Row {
    const char* name;
    double ours, base;
    const char* unit;
    double limit;
  } rows[] = {
      {"guest loop vs host loop", median(guest_loop), median(host_loop), "ns/iter", 1.10},
      {"hypercall round trip vs raw KVM_RUN", median(ks_hc), median(raw_hc), "ns", 1.10},
      {"launch-to-boot-done vs raw create+run", median(ks_launch) / 1e6, median(raw_launch) / 1e6,
       "ms", 1.30},
  };
  std::printf("backend %s, %d repetitions, medians; launch of %u VMs, %llu hypercalls\n",
              vmm::backend_name(backend), reps, vms, static_cast<unsigned long long>(hcalls));
  std::printf("%-40s %14s %14s %8s %8s\n", "benchmark", "kvmscale", "baseline", "ratio", "target");
  json out = json::array();
  for (const Row& row : rows) {
    double ratio = row.ours / row.base;
    std::printf("%-40s %11.3f %-2s %11.3f %-2s %8.3f %7s%.2f\n", row.name, row.ours, row.unit,
                row.base, row.unit, ratio, ratio <= row.limit ? "<=" : "> ", row.limit);
    out.push_back({{"name", row.name},
                   {"kvmscale", row.ours},
                   {"baseline", row.base},
                   {"unit", row.unit},
                   {"ratio", ratio},
                   {"target", row.limit}});
  }
  if (!json_out.empty()) app::write_file_atomically(json_out, out.dump(2) + "\n");
  return 0;
}
