// The simulated executor's speed (issue 21, docs/sim.md): simulated seconds per wall second and
// events per wall second for N pCPUs with 10 N spinning vCPUs (unpinned, `xen` balancer, 0-500 us
// timer jitter, default costs), on this thread. No /dev/kvm. Issue 21's target: 192 pCPUs x 2,000
// vCPUs for 10 simulated s in at most 10 s of wall time on one core.
//
//   build/bench/bench_sim [SIMULATED_SECONDS]     (default 10)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sched/sim_executor.hpp"

using namespace kvmscale::sched;

int main(int argc, char** argv) {
  double secs = 10;
  if (argc > 2 || (argc == 2 && (secs = std::atof(argv[1])) <= 0)) {
    std::fprintf(stderr, "usage: bench_sim [SIMULATED_SECONDS > 0]\n");
    return 2;
  }
  std::printf("%7s %8s %10s %10s %12s %12s %10s %10s\n", "pcpus", "vcpus", "sim_s", "wall_s",
              "sim_s/wall_s", "events/s", "passes", "trylocks");
  for (uint32_t n : {2u, 8u, 64u, 192u, 1024u}) {
    SimOptions o;
    o.npcpus = n;
    o.costs.timer_jitter_ns = 500'000;
    for (uint32_t m = 0; m < n; m++) o.vms.push_back({GuestModel::Spin, 10});
    const auto t0 = std::chrono::steady_clock::now();
    SimExecutor x(o);
    x.run(uint64_t(secs * 1e9));
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto r = x.report();
    uint64_t passes = 0, trylocks = 0;
    for (const auto& p : r["pcpus"]) {
      passes += p["balance"]["attempts_idle"].get<uint64_t>() +
                p["balance"]["attempts_over"].get<uint64_t>();
      trylocks += p["balance"]["trylocks"].get<uint64_t>();
    }
    const double sim_s = double(r["sim"]["virtual_ns"].get<uint64_t>()) / 1e9;
    std::printf("%7u %8u %10.2f %10.3f %12.1f %12.0f %10llu %10llu\n", n, 10 * n, sim_s, wall,
                sim_s / wall, double(x.engine().events()) / wall, (unsigned long long)passes,
                (unsigned long long)trylocks);
    std::fflush(stdout);
  }
  return 0;
}
