// The discrete-event engine (sim/engine.hpp): event order, determinism, stackful actors, the
// virtual clock.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "locks/common.hpp"
#include "sim/engine.hpp"
#include "sim/lock.hpp"
#include "vmm/clock.hpp"

using namespace kvmscale;
using sim::Engine;
using sim::Time;
using sim::WaitQueue;

TEST(SimEngine, EventsRunInTimeOrderThenInTheOrderTheyWereMade) {
  Engine e(1);
  std::vector<std::string> order;
  e.call_at(30, [&] { order.push_back("c30"); });
  e.call_at(10, [&] { order.push_back("a10"); });
  e.call_at(20, [&] { order.push_back("b20"); });
  e.call_at(10, [&] { order.push_back("d10"); });
  std::vector<int> ties;
  for (int i = 0; i < 64; i++) e.call_at(40, [&, i] { ties.push_back(i); });
  e.spawn(
      "actor",
      [&] {
        order.push_back("actor@" + std::to_string(e.now()));
        e.advance(10);
        order.push_back("actor@" + std::to_string(e.now()));
      },
      10);
  EXPECT_EQ(e.run(), 70u);
  EXPECT_EQ(order, (std::vector<std::string>{"a10", "d10", "actor@10", "b20", "actor@20", "c30"}));
  std::vector<int> made(64);
  std::iota(made.begin(), made.end(), 0);
  EXPECT_EQ(ties, made) << "events at one time run in the order they were made";
  EXPECT_EQ(e.now(), 40u);
}

TEST(SimEngine, RunStopsAtItsLimitAndGoesOnFromThere) {
  Engine e(1);
  std::vector<Time> seen;
  e.spawn("ticker", [&] {
    for (int i = 0; i < 5; i++) {
      seen.push_back(e.now());
      e.advance(100);
    }
  });
  e.run(250);
  EXPECT_EQ(seen, (std::vector<Time>{0, 100, 200}));
  EXPECT_EQ(e.now(), 250u);
  e.run();
  EXPECT_EQ(seen, (std::vector<Time>{0, 100, 200, 300, 400}));
  EXPECT_EQ(e.actors_alive(), 0u);
}

// Actors sleeping random times and handing work to each other through wait queues: the trace
// of every event (time, sequence, actor) is a function of the seed alone.
static std::vector<Engine::Trace> random_workload(uint64_t seed) {
  Engine e(seed);
  e.set_tracing(true);
  WaitQueue q(e);
  int handed = 0;
  for (int a = 0; a < 8; a++) {
    e.spawn("worker" + std::to_string(a), [&] {
      std::exponential_distribution<double> think(1.0 / 500);
      for (int i = 0; i < 50; i++) {
        e.advance(Time(think(e.rng())));
        if (std::uniform_int_distribution<int>(0, 2)(e.rng()) == 0 && !q.empty()) {
          q.wake(std::uniform_int_distribution<size_t>(0, q.size() - 1)(e.rng()), 7);
          handed++;
        } else if (i % 7 == 3) {
          e.call_at(e.now() + 1000, [&] { q.wake_one(); });  // a timer wakes someone
          q.wait();
        }
      }
    });
  }
  e.run();
  e.call_at(e.now(), [&] { q.wake_all(); });  // whoever still waits
  e.run();
  EXPECT_GT(handed, 0);
  EXPECT_EQ(e.actors_alive(), 0u);
  return e.trace();
}

TEST(SimEngine, TheSameSeedGivesTheSameTraceAndAnotherSeedAnother) {
  const auto a = random_workload(42), b = random_workload(42), c = random_workload(43);
  EXPECT_GT(a.size(), 400u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// An actor suspends at the bottom of a deep recursion (as inside lock() deep in policy code) and
// finds its frames intact when resumed, while other actors ran on their own stacks meanwhile.
static uint64_t deep(Engine& e, int depth, uint64_t seed) {
  volatile uint64_t frame[16];
  for (int i = 0; i < 16; i++) frame[i] = seed * 31 + uint64_t(depth * 16 + i);
  uint64_t below = 0;
  if (depth == 0)
    e.advance(5);
  else
    below = deep(e, depth - 1, seed);
  uint64_t sum = below;
  for (int i = 0; i < 16; i++) {
    EXPECT_EQ(frame[i], seed * 31 + uint64_t(depth * 16 + i)) << "depth " << depth;
    sum += frame[i];
  }
  return sum;
}

static uint64_t expected_deep_sum(int depth, uint64_t seed) {
  uint64_t sum = 0;
  for (int d = 0; d <= depth; d++)
    for (int i = 0; i < 16; i++) sum += seed * 31 + uint64_t(d * 16 + i);
  return sum;
}

TEST(SimEngine, ActorsSuspendDeepInTheirCallStacks) {
  Engine e(1);
  std::vector<uint64_t> sums(4);
  for (int a = 0; a < 4; a++)
    e.spawn("deep" + std::to_string(a), [&, a] { sums[a] = deep(e, 300, uint64_t(a + 1)); });
  e.run();
  for (int a = 0; a < 4; a++) EXPECT_EQ(sums[a], expected_deep_sum(300, uint64_t(a + 1))) << a;
  EXPECT_GE(e.switches(), 8u);
}

TEST(SimEngine, WaitQueueWakesInArrivalOrderAfterTheDelay) {
  Engine e(1);
  WaitQueue q(e);
  std::vector<std::string> woke;
  for (int a = 0; a < 3; a++)
    e.spawn("w" + std::to_string(a), [&, a] {
      e.advance(Time(a));  // arrive at 0, 1, 2
      q.wait();
      woke.push_back("w" + std::to_string(a) + "@" + std::to_string(e.now()));
    });
  e.spawn("waker", [&] {
    e.advance(100);
    EXPECT_EQ(q.size(), 3u);
    EXPECT_EQ(q.wake_one(50)->name(), "w0");
    EXPECT_EQ(q.wake(1, 10).name(), "w2");  // the second of the remaining w1, w2
    e.advance(100);
    EXPECT_EQ(q.wake_all(), 1u);
  });
  e.run();
  EXPECT_EQ(woke, (std::vector<std::string>{"w2@110", "w0@150", "w1@200"}));
}

TEST(SimEngine, EveryClockReadsVirtualTimeWhileItRuns) {
  Engine e(1);
  std::vector<uint64_t> clocks;
  e.spawn("reader", [&] {
    e.advance(123'456'789);
    clocks = {e.now(), locks::clock_ns(), now_ns(), locks::lock_clock_ns()};
  });
  e.call_at(5, [&] { EXPECT_EQ(now_ns(), 5u) << "callbacks run in virtual time too"; });
  e.run();
  EXPECT_EQ(clocks, (std::vector<uint64_t>(4, 123'456'789)));
  // After run() the thread's clock is the host's again, and another thread never saw the engine.
  const uint64_t host = locks::monotonic_ns();
  EXPECT_GE(now_ns(), host);
  EXPECT_LE(now_ns() - host, 60'000'000'000ull);
}

namespace {
struct Flag {
  bool& set;
  ~Flag() { set = true; }
};
}  // namespace

TEST(SimEngine, ShutdownUnwindsActorsThatNeverFinished) {
  bool unwound = false, after_wait = false;
  {
    Engine e(1);
    WaitQueue q(e);
    e.spawn("stuck", [&] {
      Flag f{unwound};
      q.wait();  // nobody wakes it
      after_wait = true;
    });
    e.run(1000);
    EXPECT_EQ(e.actors_alive(), 1u);
    e.shutdown();
    EXPECT_TRUE(unwound) << "the actor's stack was unwound";
  }
  EXPECT_FALSE(after_wait);
}

TEST(SimEngine, AnExceptionInAnActorStopsTheRunAndIsRethrown) {
  Engine e(1);
  int later = 0;
  e.spawn("thrower", [&] {
    e.advance(10);
    throw std::runtime_error("policy failed");
  });
  e.call_at(20, [&] { later++; });
  EXPECT_THROW(
      {
        try {
          e.run();
        } catch (const std::runtime_error& x) {
          EXPECT_STREQ(x.what(), "policy failed");
          throw;
        }
      },
      std::runtime_error);
  EXPECT_EQ(later, 0);
  EXPECT_EQ(e.now(), 10u);
}

TEST(SimEngine, AFinishedActorGivesItsStackBack) {
  Engine e(1);
  uint64_t done = 0;
  size_t most_stacks = 0;
  e.spawn("spawner", [&] {
    for (int i = 0; i < 2000; i++) {
      e.spawn("short", [&] {
        e.advance(1);
        done++;
      });
      e.advance(2);
      most_stacks = std::max(most_stacks, e.stacks());
    }
  });
  e.run();
  EXPECT_EQ(done, 2000u);
  EXPECT_EQ(e.actors_alive(), 0u);
  EXPECT_LE(most_stacks, 3u) << "the spawner, at most two short ones";
  EXPECT_EQ(e.stacks(), 0u);
}

// A waiter unwound by shutdown() leaves its queue: the holder's release, run while the holder
// unwinds after it, must not hand the lock to a finished actor.
TEST(SimEngine, AWaiterUnwoundAtShutdownLeavesItsQueue) {
  Engine e(1);
  sim::SimLock lock(e, locks::Strategy::Mcs, sim::LockCosts{});
  e.spawn("waiter", [&] {
    e.advance(10);  // the holder has it by then
    lock.lock(nullptr, nullptr);
    lock.unlock();
  });
  e.spawn("holder", [&] {
    lock.lock(nullptr, nullptr);
    struct Release {
      sim::SimLock& l;
      ~Release() { l.unlock(); }
    } release{lock};
    e.advance(1'000'000);  // still holding when the run stops
  });
  e.run(100);
  ASSERT_EQ(lock.waiting(), 1u);
  e.shutdown();  // the waiter (spawned first) unwinds first, then the holder releases
  EXPECT_EQ(lock.waiting(), 0u) << "the unwound waiter left the queue";
  EXPECT_FALSE(lock.held()) << "nobody owns the lock: its last owner let go, no one waits";
  EXPECT_EQ(lock.handoffs(), 0u) << "the lock was not handed to a finished actor";
}

// run() with no limit that runs out of events while actors still wait is a deadlock: it says so,
// naming them, instead of returning as if the run had ended.
TEST(SimEngine, ADeadlockIsReportedNamingTheBlockedActors) {
  Engine e(1);
  sim::SimLock a(e, locks::Strategy::Ticket, sim::LockCosts{});
  sim::SimLock b(e, locks::Strategy::Ticket, sim::LockCosts{});
  auto take = [&](sim::SimLock& first, sim::SimLock& second) {
    first.lock(nullptr, nullptr);
    e.advance(1'000);
    second.lock(nullptr, nullptr);
    second.unlock();
    first.unlock();
  };
  e.spawn("ab", [&] { take(a, b); });
  e.spawn("ba", [&] { take(b, a); });
  try {
    e.run();
    FAIL() << "run() returned while two actors wait for each other";
  } catch (const sim::Deadlock& d) {
    const std::string what = d.what();
    EXPECT_NE(what.find("'ab'"), std::string::npos) << what;
    EXPECT_NE(what.find("'ba'"), std::string::npos) << what;
  }
  EXPECT_EQ(e.actors_alive(), 2u);
  e.shutdown();
  EXPECT_EQ(e.actors_alive(), 0u);
}

// A bounded run may leave actors waiting (an idle pCPU at the end of a run): not a deadlock. The
// queue dies before the engine, whose shutdown then unwinds the waiter: it must not touch the
// dead queue (ASan saw a use after free here).
TEST(SimEngine, ABoundedRunLeavesWaitersWaiting) {
  Engine e(1);
  WaitQueue q(e);
  e.spawn("idle", [&] { q.wait(); });
  EXPECT_NO_THROW(e.run(5'000));
  EXPECT_EQ(e.now(), 5'000u);
  EXPECT_EQ(q.size(), 1u);
}
