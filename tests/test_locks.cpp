// Lock torture tests: every strategy, with threads fewer than, equal to and 4x more than the host's
// cores. Mutual exclusion is checked inside the critical section (an owner field and an
// unprotected counter that must come out exact); try-lock correctness; no lost wake-ups for the
// parking strategies. Each thread does a fixed number of acquisitions: no test depends on how
// many fit in a time (fairness and throughput are bench-locks' business).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "locks/registry.hpp"

using namespace kvmscale::locks;
using namespace std::chrono_literals;

namespace {

int host_cores() { return std::max(1, int(sysconf(_SC_NPROCESSORS_ONLN))); }

struct TortureResult {
  uint64_t total = 0, counter = 0, try_owned = 0, violations = 0;
};

// Each thread acquires `per_thread` times; every 8th acquisition tries first (try_lock) and takes
// the lock when the try fails. Inside: check nobody else is in, and bump a plain counter by a read
// and a later write (two threads inside lose an increment). The work is fixed, not a time: a
// loaded host makes the test slower, never red. All threads meet every kRound acquisitions, so
// none finishes before the others start: they contend whatever the host's scheduler does.
TortureResult torture(AnyLock& lock, int threads, uint64_t per_thread) {
  constexpr uint64_t kRound = 32;
  std::atomic<int> owner{-1};
  uint64_t counter = 0;  // protected only by `lock`: TSan and the final count check it
  std::atomic<uint64_t> try_owned{0}, violations{0}, arrived{0};
  std::vector<uint64_t> per(threads, 0);
  auto critical = [&](int me) {
    if (owner.exchange(me, std::memory_order_relaxed) != -1) violations++;
    const uint64_t seen = counter;
    for (int k = 0; k < 8; k++) cpu_relax();
    counter = seen + 1;
    if (owner.exchange(-1, std::memory_order_relaxed) != me) violations++;
  };
  auto meet = [&](uint64_t round) {  // returns once every thread has done `round` rounds
    arrived.fetch_add(1);
    while (arrived.load() < uint64_t(threads) * (round + 1)) std::this_thread::yield();
  };
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; t++) {
    ts.emplace_back([&, t] {
      for (uint64_t i = 0; i < per_thread; i++) {
        if (i % kRound == 0) meet(i / kRound);
        if (i % 8 == 7) {
          if (TryGuard<AnyLock> g(lock); g) {
            critical(t);
            try_owned.fetch_add(1, std::memory_order_relaxed);
            per[t]++;
            continue;
          }
        }
        Guard<AnyLock> g(lock);
        critical(t);
        per[t]++;
      }
    });
  }
  for (auto& th : ts) th.join();
  TortureResult r;
  for (uint64_t n : per) r.total += n;
  r.counter = counter;
  r.try_owned = try_owned.load();
  r.violations = violations.load();
  return r;
}

// Acquisitions per case: 100,000, or 4,000 when oversubscribed, where FIFO spinlocks hand over at
// the pace of the host's scheduler (docs/locks.md: a few thousand per second at worst).
uint64_t per_thread(int threads, int cores) {
  const uint64_t all = threads > cores ? 4000 : 100000;
  return all / uint64_t(threads) + 1;
}

class LockTorture : public testing::TestWithParam<Strategy> {};

}  // namespace

TEST_P(LockTorture, MutualExclusionAcrossThreadCounts) {
  const int cores = host_cores();
  LockRegistry reg(LockPolicy::parse(strategy_name(GetParam()), {}));
  for (int threads : {std::max(1, cores / 2), cores, 4 * cores}) {
    auto lock = reg.make("torture", std::to_string(threads) + "threads");
    const uint64_t each = per_thread(threads, cores);
    TortureResult r = torture(*lock, threads, each);
    EXPECT_EQ(r.violations, 0u) << threads << " threads";
    EXPECT_EQ(r.total, each * uint64_t(threads));
    EXPECT_EQ(r.counter, r.total) << threads << " threads: a lost or doubled increment";
    LockStats s = lock->profile()->snapshot();
    EXPECT_EQ(s.acquisitions, r.total) << "the profile counts every acquisition";
    EXPECT_EQ(s.try_ok, r.try_owned);
    uint64_t hist = 0;
    for (uint64_t h : s.wait_hist) hist += h;
    EXPECT_EQ(hist, s.contended);
    EXPECT_LE(s.contended, s.acquisitions - s.try_ok);
    std::printf("%-10s %2d threads: %9llu acquisitions (%llu contended, %llu try-fail)\n",
                strategy_name(GetParam()), threads, (unsigned long long)r.total,
                (unsigned long long)s.contended, (unsigned long long)s.try_fail);
  }
}

TEST_P(LockTorture, TryLockFailsWhileHeldAndSucceedsWhenFree) {
  AnyLock lock(GetParam());
  AnyLock::Node held;
  lock.lock(held);
  std::thread([&] {
    AnyLock::Node n;
    EXPECT_FALSE(lock.try_lock(n));
    EXPECT_FALSE(lock.try_lock(n));
  }).join();
  lock.unlock(held);
  std::thread([&] {
    AnyLock::Node n;
    ASSERT_TRUE(lock.try_lock(n));
    lock.unlock(n);
    TryGuard<AnyLock> g(lock);
    EXPECT_TRUE(g.owns());
  }).join();
}

// The CLH try-lock ABA, forced: between try_lock's read of a free tail and its CAS, another thread
// locks, unlocks and locks again (reusing the node that was the tail) and holds the lock until
// try_lock has returned. Before the free-tail mark the CAS then succeeded and try_lock queued
// behind that holder, returning true only after its whole critical section (the holder gives up
// after 10 s so that such a try_lock returns at all).
TEST(ClhLock, TryLockNeverWaitsOutAnotherHoldersCriticalSection) {
  ClhLock lock;  // not static: its destructor gives a node to this thread's pool, alive until exit
  static std::atomic<int> phase{0};  // static: the hook is a plain function pointer
  phase = 0;
  std::atomic<bool> released{false};
  std::thread holder([&lock, &released] {
    while (phase.load() != 1) std::this_thread::yield();
    ClhLock::Node a, b;
    lock.lock(a);
    lock.unlock(a);
    lock.lock(b);
    phase = 2;
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (phase.load() != 3 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(1ms);
    released = true;
    lock.unlock(b);
  });
  ClhLock::try_lock_hook = [] {
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
  };
  ClhLock::Node n;
  const bool got = lock.try_lock(n);
  const bool waited = released.load();
  phase = 3;
  ClhLock::try_lock_hook = nullptr;
  EXPECT_FALSE(got) << "the lock was held at the CAS";
  EXPECT_FALSE(waited) << "try_lock waited out the holder's critical section";
  if (got) lock.unlock(n);
  holder.join();
  ClhLock::Node m;
  EXPECT_TRUE(lock.try_lock(m)) << "free again";
  lock.unlock(m);
}

// Waiters that park (or sleep in the kernel) must all be woken: the holder keeps the lock long
// enough for every waiter to get past spinning and yielding, then releases once.
TEST_P(LockTorture, NoLostWakeups) {
  AnyLock lock(GetParam());
  const int waiters = 2 * host_cores() + 1;
  for (int round = 0; round < 20; round++) {
    AnyLock::Node held;
    lock.lock(held);
    std::atomic<int> done{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < waiters; i++)
      ts.emplace_back([&] {
        Guard<AnyLock> g(lock);
        done++;
      });
    std::this_thread::sleep_for(3ms);
    lock.unlock(held);
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (done.load() < waiters && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    if (done.load() < waiters) {
      ADD_FAILURE() << "round " << round << ": " << waiters - done.load() << " waiters never woke";
      std::fflush(stdout);
      std::abort();  // they would block join() forever
    }
    for (auto& t : ts) t.join();
  }
}

INSTANTIATE_TEST_SUITE_P(AllStrategies, LockTorture,
                         testing::Values(Strategy::Ticket, Strategy::Mcs, Strategy::Clh,
                                         Strategy::Ttas, Strategy::Pthread, Strategy::SpinYield),
                         [](const auto& info) {
                           std::string n = strategy_name(info.param);
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(LockGuards, WorkWithEveryRawStrategy) {
  TicketLock t;
  McsLock m;
  ClhLock c;
  TtasLock x;
  PthreadLock p;
  SpinYieldLock s;
  {
    Guard<TicketLock> g(t);
    EXPECT_TRUE(t.is_locked());
  }
  {
    Guard<McsLock> g(m);
    EXPECT_TRUE(m.is_locked());
  }
  {
    Guard<ClhLock> g(c);
    EXPECT_TRUE(c.is_locked());
  }
  {
    Guard<TtasLock> g(x);
    EXPECT_TRUE(x.is_locked());
  }
  { Guard<PthreadLock> g(p); }
  {
    Guard<SpinYieldLock> g(s);
    EXPECT_TRUE(s.is_locked());
  }
  EXPECT_FALSE(t.is_locked() || m.is_locked() || c.is_locked() || x.is_locked() || s.is_locked());
}

TEST(LockPolicy, ParsesDefaultsAndClassOverrides) {
  const std::vector<std::string> classes = {"call", "runq", "p2m"};
  auto p = LockPolicy::parse("mcs", classes);
  EXPECT_EQ(p.for_class("call"), Strategy::Mcs);
  p = LockPolicy::parse("call=mcs,runq=spin-yield", classes);
  EXPECT_EQ(p.for_class("call"), Strategy::Mcs);
  EXPECT_EQ(p.for_class("runq"), Strategy::SpinYield);
  EXPECT_EQ(p.for_class("p2m"), Strategy::Ticket) << "Xen's ticket lock is the default";
  p = LockPolicy::parse("ttas,call=clh", classes);
  EXPECT_EQ(p.for_class("p2m"), Strategy::Ttas);
  EXPECT_EQ(LockPolicy::parse(p.to_string(), classes).to_string(), p.to_string());
}

TEST(LockPolicy, ErrorsNameTheValidChoices) {
  const std::vector<std::string> classes = {"call", "runq"};
  auto msg = [&](const std::string& spec) {
    try {
      LockPolicy::parse(spec, classes);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(msg("spinny").find("valid: ticket, mcs, clh, ttas, pthread, spin-yield"),
            std::string::npos);
  EXPECT_NE(msg("bus=mcs").find("unknown lock class 'bus' (valid: call, runq)"), std::string::npos);
  EXPECT_NE(msg("call=mcs,call=ticket").find("given twice"), std::string::npos);
  EXPECT_NE(msg("mcs,ticket").find("two default"), std::string::npos);
  EXPECT_NE(msg("").find("empty"), std::string::npos);
  EXPECT_NE(msg("call=").find("unknown lock strategy ''"), std::string::npos);
}

TEST(LockRegistry, AggregatesClassesAndCanBeOff) {
  LockRegistry reg(LockPolicy::parse("ticket,runq=mcs", {}));
  auto a = reg.make("runq", "runq[0]");
  auto b = reg.make("runq", "runq[1]");
  auto c = reg.make("call", "call");
  EXPECT_EQ(a->strategy(), Strategy::Mcs);
  EXPECT_EQ(c->strategy(), Strategy::Ticket);
  for (int i = 0; i < 5; i++) Guard<AnyLock> g(*a);
  for (int i = 0; i < 3; i++) Guard<AnyLock> g(*b);
  {
    Guard<AnyLock> held(*c);
    AnyLock::Node n;
    EXPECT_FALSE(c->try_lock(n));
  }
  auto r = reg.report();
  EXPECT_EQ(r["classes"]["runq"]["acquisitions"], 8);
  EXPECT_EQ(r["classes"]["call"]["acquisitions"], 1);
  EXPECT_EQ(r["classes"]["call"]["try_fail"], 1);
  EXPECT_EQ(r["locks"].size(), 3u);
  EXPECT_NE(reg.table().find("class runq"), std::string::npos);

  LockPolicy off = LockPolicy::parse("mcs", {});
  off.profile = false;
  LockRegistry quiet(off);
  auto q = quiet.make("call", "call");
  EXPECT_EQ(q->profile(), nullptr);
  EXPECT_TRUE(quiet.report()["locks"].empty());
}

TEST(LockStats, Log2Buckets) {
  EXPECT_EQ(LockStats::bucket(0), 0);
  EXPECT_EQ(LockStats::bucket(1), 0);
  EXPECT_EQ(LockStats::bucket(2), 1);
  EXPECT_EQ(LockStats::bucket(1023), 9);
  EXPECT_EQ(LockStats::bucket(1024), 10);
  EXPECT_EQ(LockStats::bucket(~0ull), kWaitBuckets - 1);
}
