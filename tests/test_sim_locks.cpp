// Locks in virtual time (sim/lock.hpp) and the one clock source (locks/clock.hpp): profiles count
// and time as the real ones do, hand-offs cost what the model says, and the model's analytic
// throughput (Boyd-Wickizer et al. 2012) comes out of the simulation.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "locks/registry.hpp"
#include "sim/engine.hpp"
#include "sim/lock.hpp"

using namespace kvmscale;
using locks::AnyLock;
using locks::LockRegistry;
using locks::Strategy;
using sim::Engine;
using sim::Time;

namespace {

const Strategy kAll[] = {Strategy::Ticket, Strategy::Mcs,     Strategy::Clh,
                         Strategy::Ttas,   Strategy::Pthread, Strategy::SpinYield};

// A clock that only moves when told to.
struct FakeClock {
  uint64_t t = 1000;
  locks::ClockSource source{[](const void* c) { return static_cast<const FakeClock*>(c)->t; },
                            this};
};

// A registry whose every lock is simulated, as a simulated run builds it (--lock spec).
struct SimRegistry {
  SimRegistry(Engine& e, const std::string& spec, sim::LockCosts costs = {})
      : factory(e, costs), reg(locks::LockPolicy::parse(spec, {}), &factory) {}
  sim::SimLockFactory factory;
  LockRegistry reg;
};

locks::LockStats stats_of(const AnyLock& l) { return l.profile()->snapshot(); }

}  // namespace

// ---- the clock source -------------------------------------------------------------------------

TEST(ClockSource, LockProfilesTimeWaitsAndHoldsWithTheInstalledClock) {
  FakeClock clock;
  locks::ClockOverride use(clock.source);
  locks::LockProfile profile("call", "call");
  AnyLock lock(Strategy::Ticket, &profile, "call");  // a real ticket lock, on this thread only
  AnyLock::Node holder, waiter;
  lock.lock(holder);
  // The waiter's poll is where time passes: 1234 ns later the holder lets go.
  bool released = false;
  lock.lock(waiter, [&] {
    if (released) return;
    clock.t += 1234;
    lock.unlock(holder);
    released = true;
  });
  lock.unlock(waiter);
  // Holds are sampled every kHoldSampleEvery acquisitions: hold each for 77 ns of the clock.
  for (uint64_t i = 0; i < locks::kHoldSampleEvery; i++) {
    AnyLock::Node n;
    lock.lock(n);
    clock.t += 77;
    lock.unlock(n);
  }
  const locks::LockStats s = profile.snapshot();
  EXPECT_EQ(s.contended, 1u);
  EXPECT_EQ(s.wait_ns, 1234u) << "the wait was timed with the installed clock";
  EXPECT_EQ(s.hold_samples, 1u);
  EXPECT_EQ(s.hold_sampled_ns, 77u) << "the hold was timed with the installed clock";
}

TEST(ClockSource, OverridesNestAndBelongToOneThread) {
  FakeClock outer, inner;
  inner.t = 5;
  {
    locks::ClockOverride a(outer.source);
    EXPECT_EQ(locks::clock_ns(), 1000u);
    {
      locks::ClockOverride b(inner.source);
      EXPECT_EQ(locks::lock_clock_ns(), 5u);
      uint64_t other = 0;
      std::thread([&] { other = locks::clock_ns(); }).join();
      EXPECT_GT(other, 1'000'000u) << "another thread reads the host's clock";
    }
    EXPECT_EQ(locks::clock_ns(), 1000u);
  }
  EXPECT_GT(locks::clock_ns(), 1'000'000u);
}

// ---- simulated locks through the registry -----------------------------------------------------

TEST(SimLock, TheRegistryMakesSimulatedLocksForTheSameLockPolicy) {
  Engine e(1);
  SimRegistry r(e, "mcs,runq=ticket");
  auto call = r.reg.make("call", "call");
  auto runq = r.reg.make("runq", "runq[0]");
  EXPECT_TRUE(call->external());
  EXPECT_EQ(call->strategy(), Strategy::Mcs);
  EXPECT_EQ(runq->strategy(), Strategy::Ticket);
  e.spawn("pcpu0", [&] {
    locks::Guard<AnyLock> g(*call);
    locks::TryGuard<AnyLock> t(*runq);
    EXPECT_TRUE(t.owns());
  });
  e.run();
  const auto rep = r.reg.report();
  EXPECT_EQ(rep["classes"]["call"]["acquisitions"], 1);
  EXPECT_EQ(rep["classes"]["runq"]["try_ok"], 1);
  EXPECT_EQ(rep["locks"][1]["strategy"], "ticket");
  // Without a factory the same registry makes real locks.
  LockRegistry real(locks::LockPolicy::parse("mcs", {}));
  EXPECT_FALSE(real.make("call", "call")->external());
}

// n actors, each `rounds` times: lock, check it is alone, hold, unlock, think.
class SimLockEvery : public testing::TestWithParam<Strategy> {};

TEST_P(SimLockEvery, ExcludesInVirtualTimeAndCountsEveryAcquisition) {
  Engine e(7);
  SimRegistry r(e, locks::strategy_name(GetParam()));
  auto lock = r.reg.make("call", "call");
  int inside = 0, most_inside = 0;
  uint64_t done = 0;
  constexpr int kActors = 6, kRounds = 200;
  for (int a = 0; a < kActors; a++)
    e.spawn("pcpu" + std::to_string(a), [&] {
      std::exponential_distribution<double> think(1.0 / 300);
      for (int i = 0; i < kRounds; i++) {
        {
          locks::Guard<AnyLock> g(*lock);
          most_inside = std::max(most_inside, ++inside);
          e.advance(200);
          inside--;
          done++;
        }
        e.advance(Time(think(e.rng())));
      }
    });
  e.run();
  EXPECT_EQ(most_inside, 1);
  EXPECT_EQ(done, uint64_t(kActors * kRounds));
  const auto s = stats_of(*lock);
  EXPECT_EQ(s.acquisitions, done);
  EXPECT_GT(s.contended, done / 4) << "six actors at 40% load each wait often";
  EXPECT_LT(s.contended, done);
  EXPECT_EQ(s.try_fail, 0u) << "lock() never counts as a failed try_lock";
  EXPECT_GT(s.hold_samples, 0u);
  EXPECT_GE(s.hold_max_ns, 200u);
}

TEST_P(SimLockEvery, TryLockFailsWhileHeldCostsALineAndIsCounted) {
  Engine e(1);
  sim::LockCosts costs;
  costs.line_ns = 40;
  SimRegistry r(e, locks::strategy_name(GetParam()), costs);
  auto lock = r.reg.make("runq", "runq[1]");
  std::vector<std::pair<bool, Time>> tries;  // result, time after the try
  e.spawn("holder", [&] {
    AnyLock::Node n;
    lock->lock(n);  // taken at 0 (costs c): held from 0 to 1040
    e.advance(1000);
    lock->unlock(n);
  });
  e.spawn("balancer", [&] {
    for (Time at : {500, 2000}) {
      e.advance(at - e.now());
      AnyLock::Node n;
      const bool ok = lock->try_lock(n);
      tries.push_back({ok, e.now()});
      if (ok) lock->unlock(n);
    }
  });
  e.run();
  EXPECT_EQ(tries, (std::vector<std::pair<bool, Time>>{{false, 540}, {true, 2040}}));
  const auto s = stats_of(*lock);
  EXPECT_EQ(s.try_fail, 1u);
  EXPECT_EQ(s.try_ok, 1u);
  EXPECT_EQ(s.acquisitions, 2u);
  EXPECT_EQ(s.contended, 0u);
}

INSTANTIATE_TEST_SUITE_P(AllStrategies, SimLockEvery, testing::ValuesIn(kAll),
                         [](const auto& info) {
                           std::string n = locks::strategy_name(info.param);
                           return n == "spin-yield" ? std::string("spin_yield") : n;
                         });

// Three actors reach a free lock at once; with c = 100 and a hold of 1000, the profile's waits are
// exact consequences of the hand-off model.
static locks::LockStats three_at_once(Strategy s) {
  Engine e(1);
  SimRegistry r(e, locks::strategy_name(s));
  auto lock = r.reg.make("call", "call");
  for (int a = 0; a < 3; a++)
    e.spawn("pcpu" + std::to_string(a), [&] {
      locks::Guard<AnyLock> g(*lock);
      e.advance(1000);
    });
  e.run();
  return stats_of(*lock);
}

TEST(SimLock, ContendedWaitsAreTheHandOffModelsExactly) {
  // pcpu0 takes it (free: +c = 100, holds to 1100); pcpu1 and pcpu2 find it held at 0 and queue
  // (a waiter is timed from its lock() call). Release at 1100 with 2 waiting, release at
  // 2100 + h(2) with 1.
  auto ticket = three_at_once(Strategy::Ticket);  // h(k) = c*k/2: 100, then 50
  EXPECT_EQ(ticket.acquisitions, 3u);
  EXPECT_EQ(ticket.contended, 2u);
  EXPECT_EQ(ticket.wait_ns, 1200u + 2250u);
  EXPECT_EQ(ticket.wait_max_ns, 2250u);
  auto mcs = three_at_once(Strategy::Mcs);  // h(k) = c: 100, 100
  EXPECT_EQ(mcs.contended, 2u);
  EXPECT_EQ(mcs.wait_ns, 1200u + 2300u);
  auto ttas = three_at_once(Strategy::Ttas);  // h(k) = c*k: 200, then 100
  EXPECT_EQ(ttas.wait_ns, 1300u + 2400u);
  auto pthread = three_at_once(Strategy::Pthread);  // a futex wake: 2000 each
  EXPECT_EQ(pthread.wait_ns, 3100u + 6100u);
}

// ---- the analytic check ----------------------------------------------------------------------

namespace {

// Boyd-Wickizer et al. 2012, section 3: a Markov chain over k, the cores holding or waiting for
// the lock; each of the n - k others arrives at rate a; in state k the lock serves at
// s(k) = 1/(s + c*k/2) (ticket) or 1/(s + c) (MCS). P(k+1) = P(k) a (n-k) / s(k+1); throughput
// X = sum over k >= 1 of P(k) s(k).
double model_throughput(int n, double a, double s, double c, bool ticket) {
  auto rate = [&](int k) { return 1.0 / (s + (ticket ? c * k / 2.0 : c)); };
  std::vector<double> p(size_t(n) + 1);
  p[0] = 1;
  double sum = 1;
  for (int k = 0; k < n; k++) sum += p[size_t(k) + 1] = p[size_t(k)] * a * (n - k) / rate(k + 1);
  double x = 0;
  for (int k = 1; k <= n; k++) x += p[size_t(k)] / sum * rate(k);
  return x;
}

struct Measured {
  double throughput;  // acquisitions per ns
  double mean_wait;   // ns from lock() to owning it
};

// The same system simulated: n actors think Exp(1/a), lock, hold Exp(s), unlock.
Measured simulate(Strategy st, int n, double a, double s, Time c, Time span, uint64_t seed) {
  Engine e(seed);
  sim::LockCosts costs;
  costs.line_ns = c;
  sim::SimLock lock(e, st, costs);
  uint64_t acquired = 0;
  double waited = 0;
  for (int i = 0; i < n; i++)
    e.spawn("core" + std::to_string(i), [&] {
      std::exponential_distribution<double> think(a), hold(1.0 / s);
      for (;;) {
        e.advance(Time(std::llround(think(e.rng()))));
        if (e.now() >= span) return;
        const Time arrived = e.now();
        lock.lock(nullptr, nullptr);
        waited += double(e.now() - arrived);
        acquired++;
        e.advance(Time(std::llround(hold(e.rng()))));
        lock.unlock();
      }
    });
  e.run();
  return {double(acquired) / double(span), waited / double(acquired)};
}

}  // namespace

// The simulated lock's throughput is the model's within 3% at every n, for ticket and MCS, from
// light load to past the knee (fixed seeds: the figures are deterministic, not a sample).
TEST(SimLockModel, ThroughputMatchesTheMarkovModel) {
  const double s = 1000, c = 100;
  for (bool ticket : {true, false}) {
    for (int n : {2, 8, 16, 32, 48}) {
      const double a = 1.0 / (20000.0);  // each core wants the lock every 20 us
      const double model = model_throughput(n, a, s, c, ticket);
      const Measured m =
          simulate(ticket ? Strategy::Ticket : Strategy::Mcs, n, a, s, Time(c), 100'000'000, 3);
      EXPECT_NEAR(m.throughput / model, 1.0, 0.03)
          << (ticket ? "ticket" : "mcs") << " n=" << n << ": simulated " << m.throughput * 1e9
          << "/s, model " << model * 1e9 << "/s";
    }
  }
}

// At the same load, a ticket lock's mean wait grows faster with the cores than an MCS lock's: the
// hand-off that every waiter slows down is the collapse the paper describes.
TEST(SimLockModel, TicketWaitsGrowFasterWithCoresThanMcs) {
  const double s = 1000, a = 1.0 / 20000;
  auto wait = [&](Strategy st, int n) {
    return simulate(st, n, a, s, 100, 50'000'000, 5).mean_wait;
  };
  const double ticket8 = wait(Strategy::Ticket, 8), ticket32 = wait(Strategy::Ticket, 32);
  const double mcs8 = wait(Strategy::Mcs, 8), mcs32 = wait(Strategy::Mcs, 32);
  EXPECT_GT(ticket32 / ticket8, 1.5 * (mcs32 / mcs8))
      << "ticket " << ticket8 << " -> " << ticket32 << " ns, mcs " << mcs8 << " -> " << mcs32;
  EXPECT_GT(ticket32, mcs32);
}

// Profiling (or a tracer on the lock probes) must not change what happens in virtual time: the
// same seeded contended workload ends at the same instant with and without a profile.
TEST(SimLock, VirtualTimeIsTheSameWithAndWithoutAProfile) {
  for (Strategy s : kAll) {
    auto run = [&](bool profiled) {
      Engine e(11);
      sim::SimLockFactory factory(e, sim::LockCosts{});
      locks::LockProfile profile("call", "call");
      AnyLock lock(s, factory.make(s, "call", "call"), profiled ? &profile : nullptr, "call");
      for (int a = 0; a < 4; a++)
        e.spawn("pcpu" + std::to_string(a), [&] {
          for (int i = 0; i < 100; i++) {
            {
              locks::Guard<AnyLock> g(lock);
              e.advance(150);
            }
            e.advance(Time(std::uniform_int_distribution<int>(0, 200)(e.rng())));
          }
        });
      e.run();
      if (profiled) EXPECT_GT(profile.snapshot().contended, 0u) << "the workload contends";
      return std::make_pair(e.now(), e.events());
    };
    EXPECT_EQ(run(true), run(false)) << locks::strategy_name(s);
  }
}
