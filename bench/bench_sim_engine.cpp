// The simulation engine's speed (docs/sim.md), each against a baseline measured in the same run:
//   1. callback events (each schedules the next) vs a loop of std::function calls
//   2. actor switches (actors advancing in turn: two switches per event) vs the same loop
//   3. a contended simulated lock (8 actors, MCS), acquisitions per wall second
//   4. the KVM path's clock: locks::clock_ns() with no override vs clock_gettime itself
// Prints ns per operation and the ratio to the baseline; medians of 5 repeats. The simulated
// executor's speed at 2 to 1,024 pCPUs is bench_sim's.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "locks/clock.hpp"
#include "sim/engine.hpp"
#include "sim/lock.hpp"

using namespace kvmscale;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double ns_per_op(uint64_t ops, F&& f) {
  std::vector<double> runs;
  for (int r = 0; r < 5; r++) {
    const uint64_t t0 = locks::monotonic_ns();
    f();
    runs.push_back(double(locks::monotonic_ns() - t0) / double(ops));
  }
  return median(runs);
}

volatile uint64_t sink;

}  // namespace

int main() {
  constexpr uint64_t kN = 2'000'000;

  std::function<void(uint64_t)> call = [](uint64_t i) { sink = i; };
  const double base = ns_per_op(kN, [&] {
    for (uint64_t i = 0; i < kN; i++) call(i);
  });

  const double events = ns_per_op(kN, [&] {
    sim::Engine e(1);
    uint64_t left = kN;
    std::function<void()> tick = [&] {
      if (--left) e.call_at(e.now() + 1, tick);
    };
    e.call_at(0, tick);
    e.run();
  });

  constexpr int kActors = 64;
  const double switches = ns_per_op(kN, [&] {
    sim::Engine e(1);
    for (int a = 0; a < kActors; a++)
      e.spawn("a", [&] {
        for (uint64_t i = 0; i < kN / 2 / kActors; i++) e.advance(1);
      });
    e.run();
  });

  constexpr uint64_t kAcq = 500'000;
  const double acquisitions = ns_per_op(kAcq, [&] {
    sim::Engine e(1);
    sim::LockCosts costs;
    sim::SimLock lock(e, locks::Strategy::Mcs, costs);
    for (int a = 0; a < 8; a++)
      e.spawn("core", [&] {
        for (uint64_t i = 0; i < kAcq / 8; i++) {
          lock.lock(nullptr, nullptr);
          e.advance(500);
          lock.unlock();
          e.advance(1000);
        }
      });
    e.run();
  });

  const double gettime = ns_per_op(kN, [&] {
    for (uint64_t i = 0; i < kN; i++) {
      timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      sink = uint64_t(ts.tv_nsec);
    }
  });
  const double clock = ns_per_op(kN, [&] {
    for (uint64_t i = 0; i < kN; i++) sink = locks::clock_ns();
  });

  std::printf("%-44s %10s %10s\n", "operation", "ns/op", "x baseline");
  auto row = [&](const char* what, double ns) {
    std::printf("%-44s %10.1f %10.1f\n", what, ns, ns / base);
  };
  row("baseline: std::function call", base);
  row("callback event (heap push + pop + call)", events);
  row("actor switch with its event (64 actors)", switches);
  row("contended simulated MCS acquisition (8)", acquisitions);
  std::printf("%-44s %10.1f\n", "clock_gettime(CLOCK_MONOTONIC)", gettime);
  std::printf("%-44s %10.1f %10.3f x clock_gettime\n", "locks::clock_ns(), no override", clock,
              clock / gettime);
  std::printf("events/s %.3g, switches/s %.3g, simulated acquisitions/s %.3g\n", 1e9 / events,
              1e9 / switches, 1e9 / acquisitions);
  return 0;
}
