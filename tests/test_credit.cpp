// CreditScheduler with fake vCPUs and a virtual clock: deterministic, no KVM; threads only in
// CreditInvariant.ConcurrentPcpusNeverRunAVcpuTwice.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "sched/credit.hpp"

using namespace kvmscale::sched;
using kvmscale::locks::LockPolicy;
using kvmscale::locks::LockRegistry;

namespace {

constexpr uint64_t ms = 1'000'000;

struct Tickles : PcpuSignals {
  std::mutex m;  // pCPUs tickle under different run-queue locks (ConcurrentPcpus...)
  std::vector<uint32_t> log;
  void tickle(uint32_t p) override {
    std::lock_guard<std::mutex> g(m);
    log.push_back(p);
  }
};

struct Fixture {
  LockRegistry locks;
  Tickles tickles;
  CreditScheduler s;
  Fixture(uint32_t npcpus, CreditParams params = {}, const char* lock = "ticket")
      : locks(LockPolicy::parse(lock, {})), s(npcpus, params, locks, tickles) {}
  SchedVcpu& vcpu(SchedDomain& d, int pinned = -1) {
    CpuSet aff = pinned < 0 ? CpuSet(s.npcpus(), true) : CpuSet::single(s.npcpus(), pinned);
    return s.add_vcpu(d, aff, nullptr);
  }
};

CreditParams no_ratelimit(Balance b = Balance::Xen) {
  CreditParams p;
  p.ratelimit_ns = 0;
  p.balance = b;
  return p;
}

}  // namespace

TEST(Credit, BurnsTenCreditsPerMillisecond) {
  Fixture f(1);
  auto& d = f.s.add_domain(256, 0);
  auto& v = f.vcpu(d);
  f.s.start(0);
  auto dec = f.s.schedule(0, 0);
  ASSERT_EQ(dec.next, &v);
  EXPECT_EQ(dec.until_ns, 30 * ms) << "a 30 ms timeslice";
  f.s.tick(0, 5 * ms + 50'000);  // 5.05 ms: 50 credits, the half credit carries over
  EXPECT_EQ(v.credit.load(), -50);
  f.s.tick(0, 5 * ms + 100'000);
  EXPECT_EQ(v.credit.load(), -51);
  EXPECT_EQ(v.stats.run_ns, 5 * ms + 100'000);
}

TEST(Credit, AccountingSharesCreditsByWeight) {
  Fixture f(1, no_ratelimit());
  auto& heavy = f.s.add_domain(512, 0);
  auto& light = f.s.add_domain(256, 0);
  auto& a = f.vcpu(heavy);
  auto& b = f.vcpu(light);
  f.s.start(0);
  // Each runs through a tick once, which makes it active (it burns credit), then accounting.
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  f.s.tick(0, 10 * ms);
  ASSERT_EQ(f.s.schedule(0, 10 * ms).next, &b);
  f.s.tick(0, 20 * ms);
  int ca = a.credit.load(), cb = b.credit.load();
  f.s.account(20 * ms);
  EXPECT_EQ(a.credit.load() - ca, 200) << "300 credits per pCPU per slice, 2:1 by weight";
  EXPECT_EQ(b.credit.load() - cb, 100);
}

TEST(Credit, SamePriorityRunsRoundRobinAtSliceEnd) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  SchedVcpu* v[3] = {&f.vcpu(d), &f.vcpu(d), &f.vcpu(d)};
  f.s.start(0);
  std::vector<SchedVcpu*> order;
  for (int i = 0; i < 6; i++) order.push_back(f.s.schedule(0, uint64_t(i) * 30 * ms).next);
  EXPECT_EQ(order, (std::vector<SchedVcpu*>{v[0], v[1], v[2], v[0], v[1], v[2]}));
}

TEST(Credit, RatelimitKeepsAVcpuThatJustStarted) {
  Fixture f(1);  // 1 ms ratelimit
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.vcpu(d);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  auto dec = f.s.schedule(0, ms / 2);
  EXPECT_EQ(dec.next, &a);
  EXPECT_EQ(dec.until_ns, ms / 2 + ms) << "csched_schedule: another ratelimit from now";
  EXPECT_NE(f.s.schedule(0, 2 * ms).next, &a);
}

TEST(Credit, WakeBoostsAndTheNextTickDemotes) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_TRUE(f.s.block(0, a, ms));
  ASSERT_EQ(f.s.schedule(0, ms).next, &b);
  f.tickles.log.clear();
  f.s.wake(a, 2 * ms);
  EXPECT_EQ(a.pri.load(), int(Prio::Boost));
  EXPECT_EQ(a.stats.boosts, 1u);
  EXPECT_EQ(f.tickles.log, std::vector<uint32_t>{0}) << "BOOST beats the running UNDER vCPU";
  EXPECT_TRUE(f.s.need_resched(0));
  ASSERT_EQ(f.s.schedule(0, 2 * ms).next, &a) << "the boosted vCPU preempts";
  EXPECT_EQ(a.block_result, 0);
  EXPECT_TRUE(a.block_result_due);
  f.s.tick(0, 10 * ms);
  EXPECT_EQ(a.pri.load(), int(Prio::Under)) << "BOOST lasts until a tick finds it running";
}

TEST(Credit, WakeBeforeBlockIsNotLost) {
  Fixture f(1);
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0);
  f.s.schedule(0, 0);
  f.s.wake(a, 0);  // arrives while it still runs
  EXPECT_FALSE(f.s.block(0, a, ms)) << "the pending wake makes the block return at once";
  EXPECT_TRUE(f.s.block(0, a, ms));
}

TEST(Credit, StaleTimeoutsAreIgnored) {
  Fixture f(1, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0);
  f.s.schedule(0, 0);
  ASSERT_TRUE(f.s.block(0, a, 0));
  uint64_t first = a.block_gen;
  f.s.wake(a, ms);  // woken normally
  f.s.schedule(0, ms);
  ASSERT_TRUE(f.s.block(0, a, 2 * ms));  // blocks again
  f.s.wake(a, 3 * ms, true, first);      // the first block's timeout fires late
  EXPECT_EQ(a.state, VState::Blocked);
  f.s.wake(a, 4 * ms, true, a.block_gen);
  EXPECT_EQ(a.state, VState::Running) << "still current on pCPU 0: it just goes on";
  EXPECT_EQ(a.block_result, 1) << "timed out";
}

TEST(Credit, CapParksAndUnparks) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& capped = f.s.add_domain(256, 50);  // 50% of a pCPU = 150 credits per slice
  auto& v = f.vcpu(capped);
  f.s.start(0);
  uint64_t now = 0;
  f.s.schedule(0, now);
  // Run flat out: burns 300 per 30 ms slice, earns at most 150 (the master pCPU's tick accounts
  // every 30 ms): goes below -cap and parks.
  for (int i = 0; i < 12 && !v.parked.load(); i++) f.s.tick(0, now += 10 * ms);
  ASSERT_TRUE(v.parked.load());
  EXPECT_EQ(v.stats.parks, 1u);
  EXPECT_EQ(f.s.schedule(0, now).next, nullptr) << "a parked vCPU does not run";
  for (int i = 0; i < 10 && v.parked.load(); i++) f.s.account(now += 30 * ms);
  EXPECT_FALSE(v.parked.load()) << "accounting pays it back above zero and unparks it";
  EXPECT_EQ(f.s.schedule(0, now).next, &v);
}

TEST(Credit, FinishedVcpusNeverRunAgain) {
  Fixture f(2, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, 0);
  auto& b = f.vcpu(d, 0);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  f.s.finish(b, 0);  // queued
  f.s.finish(a, 0);  // running
  EXPECT_EQ(f.s.schedule(0, ms).next, nullptr);
  EXPECT_EQ(f.s.schedule(1, ms).next, nullptr);
}

// Balancing: pCPU 0 runs one vCPU and has two queued; pCPU 1 is idle and looks for work. Every
// strategy makes 4.7's two balance steps (soft, then hard affinity), so the one busy peer is
// considered twice unless the first step already stole (no vCPU has a soft affinity here).
namespace {
struct BalanceCase {
  Balance balance;
  bool pinned_to_0;
  uint64_t trylocks = 0, skipped_bitmap = 0, skipped_count = 0, steals = 0;
};

void run_balance_case(const BalanceCase& c) {
  Fixture f(2, no_ratelimit(c.balance));
  auto& d = f.s.add_domain(256, 0);
  int pin = c.pinned_to_0 ? 0 : -1;
  auto& a = f.vcpu(d, 0);
  f.vcpu(d, pin);  // two more, queued behind a
  f.vcpu(d, pin);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });  // everything queued on pCPU 0
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  SchedVcpu* got = f.s.schedule(1, 0).next;
  const BalanceStats& st = f.s.pcpu_stats(1).balance;
  SCOPED_TRACE(balance_name(c.balance) + std::string(c.pinned_to_0 ? " pinned" : " unpinned"));
  const bool looks = c.balance != Balance::None;
  EXPECT_EQ(st.attempts_idle, looks ? 1u : 0u);
  EXPECT_EQ(st.peers_visited, looks ? 2u : 0u);
  EXPECT_EQ(st.trylocks, c.trylocks);
  EXPECT_EQ(st.skipped_bitmap, c.skipped_bitmap);
  EXPECT_EQ(st.skipped_count, c.skipped_count);
  EXPECT_EQ(st.steals, c.steals);
  if (c.steals) {
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->processor.load(), 1u);
    EXPECT_EQ(got->stats.migrations, 1u);
  } else {
    EXPECT_EQ(got, nullptr);
  }
}
}  // namespace

TEST(CreditBalance, XenTryLocksEvenWhenNothingCanMove) {
  run_balance_case({.balance = Balance::Xen, .pinned_to_0 = true, .trylocks = 2});
  run_balance_case({.balance = Balance::Xen, .pinned_to_0 = false, .trylocks = 2, .steals = 1});
}

TEST(CreditBalance, AffinitySkipsPeersWhoseVcpusCannotRunHere) {
  run_balance_case({.balance = Balance::Affinity, .pinned_to_0 = true, .skipped_bitmap = 2});
  run_balance_case(
      {.balance = Balance::Affinity, .pinned_to_0 = false, .trylocks = 2, .steals = 1});
}

TEST(CreditBalance, CountedSkipsOnlyPeersWithOneRunnable) {
  // Three runnable on pCPU 0: counted still try-locks, pinned or not (its blind spot).
  run_balance_case({.balance = Balance::Counted, .pinned_to_0 = true, .trylocks = 2});
  run_balance_case({.balance = Balance::Counted, .pinned_to_0 = false, .trylocks = 2, .steals = 1});
}

TEST(CreditBalance, HybridSkipsPinnedPeersButStealsUnpinnedWork) {
  // Pinned: the restricted-vCPU bitmap excludes pCPU 1 (no try-lock); unpinned: the queued
  // unrestricted vCPUs make the peer worth a try-lock and the steal happens.
  run_balance_case({.balance = Balance::Hybrid, .pinned_to_0 = true, .skipped_bitmap = 2});
  run_balance_case({.balance = Balance::Hybrid, .pinned_to_0 = false, .trylocks = 2, .steals = 1});
}

TEST(CreditBalance, HybridSkipsALoneVcpuByCount) {
  Fixture f(2, no_ratelimit(Balance::Hybrid));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, -1);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.skipped_count, 2u) << "once per balance step";
  EXPECT_EQ(f.s.pcpu_stats(1).balance.trylocks, 0u);
}

TEST(CreditBalance, NoneNeverLooks) {
  run_balance_case({.balance = Balance::None, .pinned_to_0 = false});
}

TEST(CreditBalance, CountedSkipsALoneVcpu) {
  Fixture f(2, no_ratelimit(Balance::Counted));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, 0);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.skipped_count, 2u) << "once per balance step";
  EXPECT_EQ(f.s.pcpu_stats(1).balance.trylocks, 0u);
}

// --- issue 10: one vCPU never on two pCPUs; rules as Xen 4.7's sched_credit.c ------------------

TEST(CreditInvariant, WakeOfABlockedVcpuStillCurrentDoesNotQueueIt) {
  // csched_vcpu_wake: a vCPU still current on its pCPU is not queued ("vcpu_wake_running"), so
  // an idle peer cannot steal it while its pCPU has not rescheduled yet.
  Fixture f(2, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_EQ(f.s.schedule(1, 0).next, nullptr);
  ASSERT_TRUE(f.s.block(0, a, ms));
  f.s.wake(a, ms);
  SchedVcpu* on1 = f.s.schedule(1, ms).next;
  SchedVcpu* on0 = f.s.schedule(0, ms).next;
  EXPECT_FALSE(on0 == &a && on1 == &a) << "vCPU a was handed to both pCPUs";
  EXPECT_EQ(on1, nullptr) << "a running vCPU is never stolen (__csched_vcpu_is_migrateable)";
  EXPECT_EQ(on0, &a) << "the woken vCPU simply goes on running where it is";
  EXPECT_EQ(a.block_result, 0);
}

// Random interleavings of every scheduler entry point over pinned and unpinned vCPUs, checking
// after each step that no vCPU is current on two pCPUs and pinned ones stay where they belong.
TEST(CreditInvariant, RandomInterleavingsNeverRunAVcpuTwice) {
  for (Balance b : {Balance::Xen, Balance::Affinity, Balance::Counted, Balance::Hybrid}) {
    SCOPED_TRACE(balance_name(b));
    CreditParams params;
    params.balance = b;
    Fixture f(3, params);
    std::vector<SchedVcpu*> vs;
    for (int dom = 0; dom < 3; dom++) {
      auto& d = f.s.add_domain(256 * (dom + 1), dom == 2 ? 30 : 0);
      for (int i = 0; i < 3; i++) vs.push_back(&f.vcpu(d, i == 0 ? dom : -1));
    }
    f.s.start(0);
    std::vector<SchedVcpu*> cur(3, nullptr);
    uint64_t now = 0, seed = 12345;
    auto rnd = [&](uint64_t n) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      return (seed >> 33) % n;
    };
    for (int step = 0; step < 20000; step++) {
      now += rnd(3 * ms);
      uint32_t p = uint32_t(rnd(3));
      switch (rnd(8)) {
        case 0: f.s.tick(p, now); break;
        case 6: {  // a block timeout, current or stale
          SchedVcpu& v = *vs[rnd(vs.size())];
          f.s.wake(v, now, true, v.block_gen - rnd(2));
          break;
        }
        case 7:
          if (rnd(500) == 0) f.s.finish(*vs[rnd(vs.size())], now);  // its VM crashed
          break;
        case 1:
          if (cur[p] && cur[p]->state == VState::Running) {
            f.s.block(p, *cur[p], now);
          }
          break;
        case 2: f.s.wake(*vs[rnd(vs.size())], now); break;
        case 3:
          if (cur[p] && cur[p]->state == VState::Running) {
            f.s.yield(p, *cur[p]);
          }
          break;
        default: cur[p] = f.s.schedule(p, now).next; break;
      }
      for (uint32_t q = 0; q < 3; q++)
        for (uint32_t r = q + 1; r < 3; r++)
          ASSERT_FALSE(cur[q] && cur[q] == cur[r]) << "vCPU " << cur[q]->id << " runs on pCPUs "
                                                   << q << " and " << r << " at step " << step;
    }
    uint64_t steals = 0, moves = 0;
    for (uint32_t p = 0; p < 3; p++) {
      steals += f.s.pcpu_stats(p).balance.steals;
      moves += f.s.pcpu_stats(p).migrate_running;
    }
    EXPECT_GT(steals, 0u) << "the unpinned vCPUs must have been stolen for this to test anything";
    EXPECT_GT(moves, 0u) << "the tick must have moved running vCPUs (schedule() -> migrate())";
    for (SchedVcpu* v : vs) {
      if (v->affinity.count() == 1 && v->stats.schedules) {
        EXPECT_TRUE(v->affinity == v->stats.pcpus_used) << "pinned vCPU " << v->id;
      }
    }
  }
}

// Runs a for 30 ms on one pCPU with its domain-mate b queued and c (another domain) active, so the
// accounting at 35 ms leaves a OVER and b UNDER.
TEST(CreditRule, TickAccountsWithoutPreemptingForPriority) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& x = f.s.add_domain(256, 0);
  auto& y = f.s.add_domain(256, 0);
  auto& c = f.vcpu(y);
  auto& a = f.vcpu(x);
  auto& b = f.vcpu(x);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &c);
  f.s.tick(0, 5 * ms);  // c becomes active
  ASSERT_TRUE(f.s.block(0, c, 5 * ms));
  ASSERT_EQ(f.s.schedule(0, 5 * ms).next, &a);
  for (uint64_t t : {15, 25, 35, 45}) {
    f.s.tick(0, t * ms);  // the tick at 35 ms runs accounting: a OVER, b still UNDER
    EXPECT_FALSE(f.s.need_resched(0)) << "no idler to move a to; tick at " << t << " ms";
  }
  EXPECT_EQ(a.pri.load(), int(Prio::Over));
  EXPECT_EQ(f.s.schedule(0, 45 * ms).next, &b) << "the slice end hands the pCPU to b";
}

TEST(CreditRule, WakeOnABusyPcpuTicklesAnIdlerInsteadOfPreempting) {
  // __runq_tickle: with an idler in the woken vCPU's affinity, leave the running vCPU alone.
  Fixture f(2, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });  // pCPU 1 starts idle
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_TRUE(f.s.block(0, a, 0));
  ASSERT_EQ(f.s.schedule(0, 0).next, &b);
  f.s.tick(0, ms);  // b: UNDER, active
  f.tickles.log.clear();
  f.s.wake(a, 2 * ms);  // BOOST beats b's UNDER, but pCPU 1 is idle and may run a
  EXPECT_EQ(f.tickles.log, std::vector<uint32_t>{1}) << "the idler is tickled";
  EXPECT_FALSE(f.s.need_resched(0)) << "b, running and cache-hot, is left alone";
  EXPECT_EQ(f.s.schedule(1, 2 * ms).next, &a) << "the idler steals a";
}

TEST(CreditRule, WakeWithNoIdlerPreemptsALowerPriority) {
  Fixture f(1, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  f.s.tick(0, ms);
  ASSERT_TRUE(f.s.block(0, a, ms));
  ASSERT_EQ(f.s.schedule(0, ms).next, &b);
  f.s.tick(0, 2 * ms);
  f.tickles.log.clear();
  f.s.wake(a, 3 * ms);
  EXPECT_EQ(f.tickles.log, std::vector<uint32_t>{0});
  EXPECT_TRUE(f.s.need_resched(0));
}

namespace {
// Makes every vCPU of `vs` active by running each through a tick on pCPU 0 (one pCPU).
uint64_t activate_all(Fixture& f, const std::vector<SchedVcpu*>& vs, uint64_t now) {
  for (SchedVcpu* v : vs) {
    EXPECT_EQ(f.s.schedule(0, now).next, v);
    f.s.tick(0, now + ms / 10);  // burns 1 credit, activates
    f.s.yield(0, *v);
    now += ms;
  }
  return now;
}
}  // namespace

TEST(CreditRule, AccountingGivesAtMostOneSlicePerActiveVcpu) {
  // csched_acct: credit_peak = active vCPUs x credits per slice, even on 2 pCPUs (600 to share).
  Fixture f(2, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, 0);
  f.s.start(0);
  activate_all(f, {&a}, 0);
  a.credit = -400;
  f.s.account(10 * ms);
  EXPECT_EQ(a.credit.load(), -100) << "fair 600 is capped at the peak of 300";
}

TEST(CreditRule, AccountingCarriesANegativeBalanceIntoTheNextPass) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& x = f.s.add_domain(256, 0);
  auto& y = f.s.add_domain(256, 0);
  auto& a = f.vcpu(x);
  auto& c = f.vcpu(y);
  f.s.start(0);
  activate_all(f, {&a, &c}, 0);
  a.credit = -290;  // both overspent
  c.credit = -200;
  f.s.account(10 * ms);  // +150 each: a -140, c -50; balance -190
  ASSERT_EQ(a.credit.load(), -140);
  ASSERT_EQ(c.credit.load(), -50);
  f.s.account(40 * ms);  // total 300 + 190 = 490: +245 each
  EXPECT_EQ(a.credit.load(), 105);
  EXPECT_EQ(c.credit.load(), 195);
}

TEST(CreditRule, AccountingEndsBoost) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0);
  activate_all(f, {&a, &b}, 0);
  ASSERT_EQ(f.s.schedule(0, 3 * ms).next, &a);
  ASSERT_TRUE(f.s.block(0, a, 3 * ms));
  f.s.schedule(0, 3 * ms);
  f.s.wake(a, 4 * ms);
  ASSERT_EQ(a.pri.load(), int(Prio::Boost));
  f.s.account(10 * ms);
  EXPECT_EQ(a.pri.load(), int(Prio::Under)) << "csched_acct sets every active vCPU UNDER or OVER";
}

TEST(CreditRule, CreditsPerSliceFollowTheTimeslice) {
  CreditParams p = no_ratelimit(Balance::None);
  p.tslice_ns = 10 * ms;  // credits_per_tslice = 10 credits/ms x 10 ms
  Fixture f(1, p);
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0);
  activate_all(f, {&a}, 0);
  int before = a.credit.load();
  f.s.account(10 * ms);
  EXPECT_EQ(a.credit.load() - before, 100);
}

TEST(CreditRule, CappedVcpuIsParkedOffTheRunQueue) {
  // csched_acct parks a vCPU over its cap with vcpu_pause_nosync: it is not runnable, so it leaves
  // the run queue (and the runnable counts the balancers read) until accounting unparks it.
  Fixture f(2, no_ratelimit(Balance::Counted));
  auto& capped = f.s.add_domain(256, 10);
  auto& free = f.s.add_domain(256, 0);
  auto& v = f.vcpu(capped, 0);
  auto& w = f.vcpu(free, 0);
  f.s.start(0);
  activate_all(f, {&v, &w}, 0);
  ASSERT_EQ(f.s.schedule(0, 2 * ms).next, &v);  // v running, w queued
  v.credit = -200;
  f.s.account(10 * ms);
  ASSERT_TRUE(v.parked.load());
  EXPECT_EQ(f.s.schedule(0, 11 * ms).next, &w);
  EXPECT_TRUE(f.s.queued(0).empty()) << "a parked vCPU is not queued";
  v.credit = 100;
  f.s.account(40 * ms);
  ASSERT_FALSE(v.parked.load());
  EXPECT_EQ(f.s.queued(0), std::vector<SchedVcpu*>{&v}) << "unparking queues it again";
  EXPECT_EQ(v.pri.load(), int(Prio::Boost))
      << "4.7 clears PARKED before vcpu_unpause, so the wake boosts it";
}

TEST(CreditRule, YieldRunsOneLowerPriorityVcpuFirst) {
  // __runq_insert: a yielding vCPU goes behind one lower-priority vCPU.
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0);
  uint64_t now = activate_all(f, {&a, &b}, 0);
  a.credit = 100;
  b.credit = -200;
  f.s.account(now);  // a UNDER, b OVER
  f.s.tick(0, now);  // re-sort
  ASSERT_EQ(f.s.schedule(0, now).next, &a);
  f.s.yield(0, a);
  EXPECT_EQ(f.s.schedule(0, now + ms).next, &b);
}

TEST(CreditBalance, XenTriesEveryBusyPeerOncePerBalanceStep) {
  // csched_load_balance: a soft-affinity step, then a hard-affinity step, each try-locking every
  // busy peer. Nothing here can move (all pinned to pCPU 0): 2 steps x 1 busy peer.
  Fixture f(2, no_ratelimit(Balance::Xen));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, 0);
  f.vcpu(d, 0);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.trylocks, 2u);
}

TEST(CreditBalance, XenStartsAtTheFirstBusyPeer) {
  // 4.7 visits a node's busy pCPUs from the first one (cpumask_first); 4.9 added a rotating start.
  Fixture f(3, no_ratelimit(Balance::Xen));
  auto& d = f.s.add_domain(256, 0);
  std::vector<SchedVcpu*> on0, on1;
  for (int i = 0; i < 3; i++) on0.push_back(&f.vcpu(d));
  for (int i = 0; i < 3; i++) on1.push_back(&f.vcpu(d));
  f.s.start(0, [&](const SchedVcpu& v) { return v.id < 3 ? 0u : 1u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, on0[0]);
  ASSERT_EQ(f.s.schedule(1, 0).next, on1[0]);
  SchedVcpu* first = f.s.schedule(2, 0).next;
  ASSERT_TRUE(f.s.block(2, *first, 0));
  SchedVcpu* second = f.s.schedule(2, 0).next;
  EXPECT_EQ(first, on0[1]);
  EXPECT_EQ(second, on0[2]) << "the second steal starts from pCPU 0 again";
}

// __csched_vcpu_is_migrateable: a queued vCPU switched out less than vcpu_migration_delay ago is
// cache-hot and stays on its pCPU; once the delay has passed it can be stolen.
TEST(CreditRule, MigrationDelayKeepsACacheHotVcpuOnItsPcpu) {
  CreditParams p = no_ratelimit(Balance::Xen);
  p.migration_delay_ns = 5 * ms;
  Fixture f(2, p);
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });  // both queued on pCPU 0
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_EQ(f.s.schedule(0, 30 * ms).next, &b) << "a's slice ended: a is queued, just switched out";
  EXPECT_EQ(f.s.schedule(1, 31 * ms).next, nullptr) << "1 ms after it ran, a is cache-hot";
  EXPECT_EQ(f.s.pcpu_stats(1).balance.skipped_hot, 1u) << "in the hard-affinity step";
  EXPECT_EQ(f.s.schedule(1, 36 * ms).next, &a) << "6 ms after, it is not";
  EXPECT_EQ(a.processor.load(), 1u);

  Fixture g(2, no_ratelimit(Balance::Xen));  // the default delay, 0: nothing is hot
  auto& e = g.s.add_domain(256, 0);
  auto& c = g.vcpu(e);
  auto& h = g.vcpu(e);
  g.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(g.s.schedule(0, 0).next, &c);
  ASSERT_EQ(g.s.schedule(0, 30 * ms).next, &h);
  EXPECT_EQ(g.s.schedule(1, 31 * ms).next, &c);
  EXPECT_EQ(g.s.pcpu_stats(1).balance.skipped_hot, 0u);
}

// Weights on a virtual clock: one pCPU, two always-running vCPUs of weights 512 and 256, ticks
// every 10 ms and a reschedule at every slice end, for 3 s: a 2:1 split of pCPU time.
TEST(CreditRule, WeightsSplitAPcpuTwoToOne) {
  Fixture f(1);
  auto& heavy = f.s.add_domain(512, 0);
  auto& light = f.s.add_domain(256, 0);
  auto& a = f.vcpu(heavy);
  auto& b = f.vcpu(light);
  f.s.start(0);
  uint64_t now = 0, next_tick = 10 * ms, deadline = 0;
  SchedVcpu* cur = nullptr;
  while (now < 3000 * ms) {
    if (!cur || now >= deadline || f.s.need_resched(0)) {
      auto d = f.s.schedule(0, now);
      cur = d.next;
      deadline = d.until_ns;
    }
    now = std::min(deadline, next_tick);
    if (now >= next_tick) {
      f.s.tick(0, now);
      next_tick += 10 * ms;
    }
  }
  f.s.schedule(0, now);
  EXPECT_NEAR(double(a.stats.run_ns) / double(b.stats.run_ns), 2.0, 0.1);
}

TEST(CreditInvariant, ABlockAfterTheVcpuWasFinishedIsNotABlock) {
  // Its VM crashed on another pCPU (finish) while it was in guest mode; then its BLOCK exit
  // arrives. It must stay Done, not become Blocked (and later woken and run again).
  Fixture f(2, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  f.s.finish(a, ms);
  EXPECT_FALSE(f.s.block(0, a, ms));
  EXPECT_EQ(a.state, VState::Done);
  f.s.wake(a, 2 * ms);
  EXPECT_EQ(f.s.schedule(0, 2 * ms).next, nullptr);
  EXPECT_EQ(f.s.schedule(1, 2 * ms).next, nullptr);
}

TEST(CreditRule, AParkedVcpuWokenFromABlockStaysOffTheQueueUntilUnparked) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& capped = f.s.add_domain(256, 10);
  auto& other = f.s.add_domain(256, 0);
  auto& v = f.vcpu(capped);
  auto& w = f.vcpu(other);
  f.s.start(0);
  activate_all(f, {&v, &w}, 0);
  ASSERT_EQ(f.s.schedule(0, 2 * ms).next, &v);
  ASSERT_TRUE(f.s.block(0, v, 2 * ms));
  ASSERT_EQ(f.s.schedule(0, 2 * ms).next, &w);
  v.credit = -200;
  f.s.account(10 * ms);
  ASSERT_TRUE(v.parked.load());
  f.s.wake(v, 11 * ms);
  EXPECT_EQ(v.state, VState::Runnable);
  EXPECT_TRUE(f.s.queued(0).empty()) << "woken but parked: not runnable";
  EXPECT_NE(v.pri.load(), int(Prio::Boost)) << "csched_vcpu_wake does not boost a parked vCPU";
  v.credit = 100;
  f.s.account(40 * ms);
  EXPECT_EQ(f.s.queued(0), std::vector<SchedVcpu*>{&v});
}

TEST(CreditRule, RatelimitCountsFromWhenTheVcpuStartedRunning) {
  // csched_schedule measures the ratelimit from the runstate entry time: a vCPU picked again at
  // its slice end has been running all along, so a wake just after may preempt it.
  Fixture f(1);  // 1 ms ratelimit
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_TRUE(f.s.block(0, a, 0));
  ASSERT_EQ(f.s.schedule(0, 0).next, &b);
  f.s.tick(0, 10 * ms);  // b UNDER, active
  ASSERT_EQ(f.s.schedule(0, 30 * ms).next, &b) << "alone: picked again at its slice end";
  f.s.wake(a, 30 * ms + ms / 5);  // BOOST, no idler: preempts
  ASSERT_TRUE(f.s.need_resched(0));
  EXPECT_EQ(f.s.schedule(0, 30 * ms + ms / 5).next, &a) << "b has run 30 ms, not 0.2 ms";
}

// The one atomic bitmap type (idle mask, affinity bitmaps, p2m masks): members past the first
// word, fill() of a size that is not a multiple of 64, and test_and_clear's one winner.
TEST(AtomicCpuSet, MembersFillAndTestAndClear) {
  using kvmscale::sched::AtomicCpuSet;
  constexpr auto mo = std::memory_order_seq_cst;
  AtomicCpuSet s(130);
  s.set(0, mo);
  s.set(129, mo);
  s.set(64, mo);
  EXPECT_EQ(s.snapshot(mo).to_string(), "0,64,129");
  s.clear(64, mo);
  EXPECT_FALSE(s.test(64, mo));
  EXPECT_TRUE(s.test_and_clear(129, mo));
  EXPECT_FALSE(s.test_and_clear(129, mo)) << "only one caller clears a member";
  s.fill(mo);
  EXPECT_EQ(s.snapshot(mo).count(), 130u) << "fill sets no index past the size";
  EXPECT_EQ(s.snapshot(mo).to_string(), "0-129");
}

// --- run-queue order and cost at scale (issue 13) ----------------------------------------------

namespace {
// Xen 4.7's __runq_insert, literally: walk from the head to the first vCPU of lower priority; a
// yielder goes one further. Priorities as they were when each vCPU was queued.
struct XenRunq {
  std::vector<std::pair<SchedVcpu*, int>> q;  // vCPU, priority when queued
  uint64_t yielders_behind_lower = 0;         // how often a yielder went one further
  void insert(SchedVcpu* v, int pri, bool yield) {
    auto it = q.begin();
    while (it != q.end() && it->second >= pri) ++it;
    if (yield && it != q.end()) {
      ++it;
      yielders_behind_lower++;
    }
    q.insert(it, {v, pri});
  }
  std::vector<SchedVcpu*> order() const {
    std::vector<SchedVcpu*> o;
    for (auto& e : q) o.push_back(e.first);
    return o;
  }
};
}  // namespace

// Random wakes, blocks, yields, slice ends and priority changes of running or blocked vCPUs (as
// accounting makes them): after every step the queue is exactly what Xen's linear walk builds.
TEST(CreditRunq, OrderIsXensLinearInsertUnderRandomOperations) {
  Fixture f(1, no_ratelimit(Balance::None));
  std::vector<SchedVcpu*> vs;
  for (int i = 0; i < 12; i++) vs.push_back(&f.vcpu(f.s.add_domain(256, 0)));
  const int pris[] = {int(Prio::Boost), int(Prio::Under), int(Prio::Over)};
  uint64_t seed = 42, now = 0;
  auto rnd = [&](uint64_t n) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (seed >> 33) % n;
  };
  for (SchedVcpu* v : vs) v->pri = pris[rnd(3)];
  XenRunq xen;
  f.s.start(0);
  for (SchedVcpu* v : vs) xen.insert(v, v->pri.load(), false);
  ASSERT_EQ(f.s.queued(0), xen.order());
  SchedVcpu* cur = nullptr;
  bool yielded = false;
  for (int step = 0; step < 20000; step++) {
    now += ms;
    switch (rnd(5)) {
      case 0:  // slice end: the running vCPU competes again, then the head runs
      case 1: {
        if (cur && cur->state == VState::Running)
          xen.insert(cur, cur->pri.load(), yielded);  // schedule() requeues cur first
        yielded = false;
        SchedVcpu* expect = xen.q.empty() ? nullptr : xen.q.front().first;
        if (expect) xen.q.erase(xen.q.begin());
        cur = f.s.schedule(0, now).next;
        ASSERT_EQ(cur, expect) << "step " << step;
        break;
      }
      case 2:
        if (cur && cur->state == VState::Running) {
          if (rnd(2)) {
            f.s.yield(0, *cur);
            yielded = true;
          } else {
            ASSERT_TRUE(f.s.block(0, *cur, now));
          }
        }
        break;
      case 3: {  // wake a blocked vCPU that is no longer current
        SchedVcpu* v = vs[rnd(vs.size())];
        if (v->state != VState::Blocked || v == cur) break;
        v->pri = pris[1 + rnd(2)];  // accounting ran while it slept: UNDER (boosts) or OVER
        f.s.wake(*v, now);
        xen.insert(v, v->pri.load(), false);
        break;
      }
      case 4:  // accounting changes the running vCPU's priority
        if (cur) cur->pri = pris[rnd(3)];
        break;
    }
    ASSERT_EQ(f.s.queued(0), xen.order()) << "step " << step;
  }
  EXPECT_GT(xen.yielders_behind_lower, 500u) << "the walk's odd case must be exercised";
}

// csched_runq_sort moves only OVER vCPUs back: a BOOSTed vCPU that accounting made UNDER stays
// ahead of a BOOSTed one queued after it, and the next BOOST goes in front of both.
TEST(CreditRunq, ResortKeepsBoostAndUnderInterleavedAsXen) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto &a = f.vcpu(d), &b = f.vcpu(d), &c = f.vcpu(d), &e = f.vcpu(d);
  f.s.start(0);
  uint64_t now = 0;
  ASSERT_EQ(f.s.schedule(0, now).next, &a);
  f.s.tick(0, now += ms / 10);  // a is active (accounted), the others never are
  const std::vector<SchedVcpu*> in_turn = {&a, &b, &c, &e, nullptr};
  for (size_t i = 0; i + 1 < in_turn.size(); i++) {  // each blocks, the next one runs
    ASSERT_TRUE(f.s.block(0, *in_turn[i], now += ms));
    ASSERT_EQ(f.s.schedule(0, now).next, in_turn[i + 1]);
  }
  f.s.wake(a, now += ms);
  f.s.wake(e, now += ms);
  ASSERT_EQ(f.s.queued(0), (std::vector<SchedVcpu*>{&a, &e}));
  f.s.account(now += ms);  // a: BOOST ends, UNDER; e is not active: still BOOST
  ASSERT_EQ(a.pri.load(), int(Prio::Under));
  ASSERT_EQ(e.pri.load(), int(Prio::Boost));
  f.s.tick(0, now += ms);  // re-sort: nothing is OVER, the order stays
  f.s.wake(b, now += ms);  // BOOST: before the first vCPU of lower priority, a
  f.s.wake(c, now += ms);
  EXPECT_EQ(f.s.queued(0), (std::vector<SchedVcpu*>{&b, &c, &a, &e}));
}

// A slice end's cost does not grow with the queue's length (__runq_insert walks the queue;
// runq_insert keeps where each walk stops): timed by bench/bench_growth, not asserted here.

// PcpuExecutor runs the accounting on its own thread: pCPU 0's tick only says a pass is due, once
// per timeslice, and leaves the pass (O(active vCPUs)) to the caller.
TEST(CreditRule, TheMasterTickCanHandTheAccountingPassToTheCaller) {
  CreditParams params = no_ratelimit(Balance::None);
  params.account_on_tick = false;
  Fixture f(2, params);
  auto& a = f.vcpu(f.s.add_domain(256, 0), 0);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_FALSE(f.s.tick(0, 10 * ms)) << "not due before a timeslice";
  ASSERT_TRUE(a.active.load());
  const int before = a.credit.load();
  EXPECT_FALSE(f.s.tick(1, 30 * ms)) << "only the master pCPU accounts";
  EXPECT_TRUE(f.s.tick(0, 30 * ms));
  EXPECT_EQ(f.s.report()["accounting_passes"], 0) << "the tick did not run the pass itself";
  EXPECT_EQ(a.credit.load(), before - 200) << "only the burn of 20 ms more";
  EXPECT_FALSE(f.s.tick(0, 40 * ms)) << "one pass per timeslice";
  f.s.account(40 * ms);
  EXPECT_EQ(f.s.report()["accounting_passes"], 1);
  EXPECT_TRUE(f.s.tick(0, 95 * ms)) << "late: one pass, not two";
  EXPECT_FALSE(f.s.tick(0, 100 * ms));
  EXPECT_TRUE(f.s.tick(0, 120 * ms));
}

// --- issue 25: work conservation (csched_vcpu_acct's migration, __runq_tickle's idler) ----------

namespace {
// Drives pCPUs as PcpuExecutor does, on a 1 ms virtual clock: a pCPU running a vCPU ticks every
// tick_ns (staggered as the executor staggers them) and schedules when its deadline passed, a
// tick or a tickle asked for it; an idle pCPU sleeps until tickled, except pCPU 0, which keeps
// ticking. busy_since[p]: the first ms from which p ran a vCPU in every ms up to the end.
struct Sim {
  Fixture& f;
  uint32_t n;
  std::vector<SchedVcpu*> cur;
  std::vector<uint64_t> deadline, next_tick, busy_since, busy_ms;
  std::vector<bool> asleep;
  size_t seen = 0;
  explicit Sim(Fixture& fx)
      : f(fx),
        n(fx.s.npcpus()),
        cur(n, nullptr),
        deadline(n, 0),
        next_tick(n),
        busy_since(n, ~0ull),
        busy_ms(n, 0),
        asleep(n, false) {
    for (uint32_t p = 0; p < n; p++) next_tick[p] = f.s.params().tick_ns * (p + 1) / n;
  }
  void run(uint64_t from, uint64_t to) {
    for (uint64_t t = from; t < to; t += ms) {
      for (; seen < f.tickles.log.size(); seen++) asleep[f.tickles.log[seen]] = false;
      for (uint32_t p = 0; p < n; p++) {
        if (t >= next_tick[p] && (!asleep[p] || p == 0)) f.s.tick(p, t);
        while (next_tick[p] <= t) next_tick[p] += f.s.params().tick_ns;
        if (asleep[p]) continue;
        if (!cur[p] || t >= deadline[p] || f.s.need_resched(p)) {
          auto d = f.s.schedule(p, t);
          cur[p] = d.next;
          deadline[p] = d.until_ns;
          asleep[p] = cur[p] == nullptr;
        }
        if (cur[p]) {
          busy_ms[p]++;
          if (busy_since[p] == ~0ull) busy_since[p] = t;
        } else {
          busy_since[p] = ~0ull;
        }
      }
    }
  }
};
}  // namespace

// Issue 25's first case: pCPU 1 finds the only candidate cache-hot, goes idle and sleeps; in
// 4.7 the tick on pCPU 0 (csched_vcpu_acct) moves the running vCPU, active a while, to the
// idler _csched_cpu_pick names, so both vCPUs run in parallel within about two ticks.
TEST(CreditRule, TheTickMovesARunningVcpuToAnIdlerWithinTwoTicks) {
  CreditParams p = no_ratelimit(Balance::Xen);
  p.migration_delay_ns = 1000 * ms;  // every queued vCPU stays cache-hot for the whole run
  Fixture f(2, p);
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  Sim sim(f);
  sim.run(0, 300 * ms);
  EXPECT_GT(f.s.pcpu_stats(1).balance.skipped_hot, 0u) << "pCPU 1 first found b cache-hot";
  EXPECT_LE(sim.busy_since[1], 2 * f.s.params().tick_ns) << "pCPU 1 idled on";
  EXPECT_LE(sim.busy_since[0], 0u);
  EXPECT_EQ(f.s.pcpu_stats(0).migrate_running, 1u);
  EXPECT_EQ(a.stats.migrations + b.stats.migrations, 1u) << "one move, then each stays put";
  EXPECT_NEAR(double(a.stats.run_ns), double(b.stats.run_ns), double(30 * ms));
}

// A vCPU alone on its pCPU stays there even with idlers around (_csched_cpu_pick prefers its own
// pCPU when nothing else is queued there: IS_RUNQ_IDLE).
TEST(CreditRule, TheTickLeavesAVcpuAloneOnItsPcpuWhereItIs) {
  Fixture f(3, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 1u; });
  Sim sim(f);
  sim.run(0, 100 * ms);
  EXPECT_EQ(a.stats.migrations, 0u);
  EXPECT_EQ(a.stats.pcpus_used.to_string(), "1");
  EXPECT_EQ(f.s.pcpu_stats(1).migrate_running, 0u);
}

// Issue 25's second case: pCPUs 1 and 2 idle, a vCPU allowed on {0, 2} wakes on busy pCPU 0.
// __runq_tickle must wake pCPU 2, the idler that may run it; cycling over every idler (4.7) woke
// pCPU 1, which cannot, and the vCPU waited for pCPU 0's slice end.
TEST(CreditRule, AWakeTicklesAnIdlerInTheWokenVcpusAffinity) {
  Fixture f(3, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  CpuSet zero_two(3);
  zero_two.set(0);
  zero_two.set(2);
  auto& v = f.s.add_vcpu(d, zero_two, nullptr);
  auto& x = f.vcpu(d, 0);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &v);
  ASSERT_TRUE(f.s.block(0, v, 0));
  ASSERT_EQ(f.s.schedule(0, 0).next, &x);
  ASSERT_EQ(f.s.schedule(1, 0).next, nullptr);
  ASSERT_EQ(f.s.schedule(2, 0).next, nullptr);
  f.tickles.log.clear();
  f.s.wake(v, ms);
  EXPECT_EQ(f.tickles.log, std::vector<uint32_t>{2});
  EXPECT_EQ(f.s.schedule(2, ms).next, &v);
}

// __runq_tickle: the woken vCPU may run only here and beats the running one, which may run on an
// idler: it preempts, and the preempted vCPU moves to the idler (_VPF_migrating) instead of
// waiting here.
TEST(CreditRule, AVcpuPreemptedByAPinnedWakerMovesToAnIdler) {
  Fixture f(2, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& v = f.vcpu(d, 0);
  auto& x = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &v);
  ASSERT_TRUE(f.s.block(0, v, 0));
  ASSERT_EQ(f.s.schedule(0, 0).next, &x);
  ASSERT_EQ(f.s.schedule(1, 0).next, nullptr);
  f.tickles.log.clear();
  f.s.wake(v, ms);  // BOOST over x's UNDER; no idler may run v
  EXPECT_EQ(f.tickles.log, std::vector<uint32_t>{0});
  EXPECT_EQ(f.s.pcpu_stats(0).migrate_kicked_away, 1u);
  EXPECT_EQ(f.s.schedule(0, ms).next, &v);
  EXPECT_EQ(x.processor.load(), 1u);
  EXPECT_EQ(f.tickles.log, (std::vector<uint32_t>{0, 1})) << "x queued on pCPU 1, which is woken";
  EXPECT_EQ(f.s.schedule(1, ms).next, &x);
}

// --- issue 25: each rule of docs/scheduler.md fails a test of its own when broken --------------

// csched_acct: a vCPU's credit never goes below minus one slice.
TEST(CreditRule, AccountingFloorsCreditAtMinusOneSlice) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0);
  activate_all(f, {&a}, 0);
  a.credit = -1000;
  f.s.account(10 * ms);  // -1000 + 300 = -700: below -300
  EXPECT_EQ(a.credit.load(), -300);
  EXPECT_EQ(a.pri.load(), int(Prio::Over));
}

// csched_acct: above one slice a vCPU stops earning (leaves the active list) and keeps half.
TEST(CreditRule, AccountingStopsAndHalvesAVcpuAboveOneSlice) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0);
  activate_all(f, {&a}, 0);
  a.credit = 200;
  f.s.account(10 * ms);  // 200 + 300 = 500 > 300
  EXPECT_EQ(a.credit.load(), 250);
  EXPECT_FALSE(a.active.load()) << "__csched_vcpu_acct_stop_locked";
  const int before = a.credit.load();
  f.s.account(40 * ms);
  EXPECT_EQ(a.credit.load(), before) << "an inactive vCPU earns nothing";
}

// csched_acct's credit_xtra: a domain held to its peak (here its cap) after one that was not
// moves to the front of the active domains, so that from the next pass on its unused share is
// handed to the domains after it.
TEST(CreditRule, ADomainHeldToItsPeakMovesToTheFrontAndLeavesItsSurplusToOthers) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& free = f.s.add_domain(256, 0);
  auto& capped = f.s.add_domain(256, 10);  // credit_cap 30 per pass
  auto& c = f.vcpu(capped);
  auto& a = f.vcpu(free);
  f.s.start(0);
  activate_all(f, {&c, &a}, 0);  // activated last, `free` is first: [free, capped]
  a.credit = -180;
  c.credit = 0;
  f.s.account(10 * ms);  // free: 150; capped: 30, its 120 surplus has nobody after it
  ASSERT_EQ(a.credit.load(), -30);
  ASSERT_EQ(c.credit.load(), 30);  // the balance is 0: no carry into the next pass
  a.credit = -180;
  c.credit = 0;
  f.s.account(40 * ms);  // [capped, free]: capped's 120 surplus x 2 goes to free: 540 / 2
  EXPECT_EQ(a.credit.load() + 180, 270);
  EXPECT_EQ(c.credit.load(), 30);
}

// csched_runq_sort: after an accounting pass the pCPU's next tick moves the OVER vCPUs behind
// the UNDER ones.
TEST(CreditRule, TheTickAfterAPassMovesOverVcpusBehindUnderOnes) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& x = f.s.add_domain(256, 0);
  auto& y = f.s.add_domain(256, 0);
  auto& a = f.vcpu(x);
  auto& b = f.vcpu(x);
  auto& c = f.vcpu(y);
  f.s.start(0);
  uint64_t now = activate_all(f, {&a, &b, &c}, 0);
  ASSERT_EQ(f.s.queued(0), (std::vector<SchedVcpu*>{&a, &b})) << "c runs";
  a.credit = -200;
  b.credit = 0;
  f.s.account(now);  // +100 each: a -100 OVER, b 100 UNDER
  ASSERT_EQ(a.pri.load(), int(Prio::Over));
  EXPECT_EQ(f.s.queued(0), (std::vector<SchedVcpu*>{&a, &b})) << "sorted lazily, at the tick";
  f.s.tick(0, now);
  EXPECT_EQ(f.s.queued(0), (std::vector<SchedVcpu*>{&b, &a}));
}

// csched_runq_steal: "Don't steal from an idle CPU's runq because it's about to pick it up
// itself": pCPU 0 has queued vCPUs but has not scheduled yet (it runs the idle vCPU).
TEST(CreditBalance, NeverStealsFromAPeerRunningItsIdleVcpu) {
  Fixture f(2, no_ratelimit(Balance::Xen));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.trylocks, 2u) << "it looked (pCPU 0 is not in the idlers)";
  EXPECT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_EQ(f.s.schedule(1, 0).next, &b) << "once pCPU 0 runs a, b may be stolen";
}

// __csched_set_tslice: three ticks per timeslice, the whole slice under 3 ms; the scheduler
// takes its tick from it unless told otherwise, and reports it.
TEST(CreditRule, TheTickIsAThirdOfTheSliceAndTheWholeSliceUnderThreeMs) {
  EXPECT_EQ(tick_period_ns(30 * ms), 10 * ms);
  EXPECT_EQ(tick_period_ns(3 * ms), 1 * ms);
  EXPECT_EQ(tick_period_ns(2 * ms), 2 * ms);
  for (uint64_t slice : {30 * ms, 6 * ms, 1 * ms}) {
    CreditParams p;
    p.tslice_ns = slice;
    Fixture f(1, p);
    EXPECT_EQ(f.s.params().tick_ns, tick_period_ns(slice));
    EXPECT_EQ(f.s.report()["tick_ns"], tick_period_ns(slice));
  }
}

// csched_vcpu_wake's "vcpu_wake_running": the wake of a vCPU still current on its pCPU leaves it
// Running and off the queue. (A queued current vCPU is also never stolen nor run twice, which is
// why the invariant tests above do not see this rule alone broken.)
TEST(CreditInvariant, AWakeOfAVcpuStillCurrentLeavesItRunningAndUnqueued) {
  Fixture f(2, no_ratelimit());
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_TRUE(f.s.block(0, a, ms));
  f.tickles.log.clear();
  f.s.wake(a, ms);
  EXPECT_EQ(a.state, VState::Running);
  EXPECT_TRUE(f.s.queued(0).empty());
  EXPECT_TRUE(f.tickles.log.empty()) << "nothing to tickle: it runs on";
  EXPECT_NE(a.pri.load(), int(Prio::Boost)) << "not a wake from the queue's point of view";
}

// --- review of issue 25: the move between two run-queue locks (schedule() -> migrate()) ---------

namespace {
// pCPU 0 runs a with b queued, pCPU 1 idles: the tick marks a (active) migrating, so pCPU 0's
// next schedule() moves a to pCPU 1 through between_locks_hook.
struct MoveFixture {
  Fixture f{2, no_ratelimit(Balance::None)};
  SchedDomain& d = f.s.add_domain(256, 0);
  SchedVcpu& a = f.vcpu(d);
  SchedVcpu& b = f.vcpu(d);
  MoveFixture() {
    f.s.start(0, [](const SchedVcpu&) { return 0u; });
    EXPECT_EQ(f.s.schedule(0, 0).next, &a);
    EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
    f.s.tick(0, 10 * ms);  // activates a
    f.s.tick(0, 20 * ms);  // marks it migrating
    EXPECT_EQ(f.s.pcpu_stats(0).migrate_running, 1u);
  }
};
}  // namespace

// A vCPU that finished (its VM crashed) between the locks is not queued on the target.
TEST(CreditInvariant, AVcpuFinishedBetweenTheTwoLocksOfAMoveIsNotQueued) {
  MoveFixture m;
  int calls = 0;
  m.f.s.between_locks_hook = [&](SchedVcpu& v) {
    calls++;
    EXPECT_EQ(&v, &m.a);
    EXPECT_EQ(v.processor.load(), 1u) << "processor names the target before the old lock goes";
    m.f.s.finish(v, 20 * ms);
  };
  EXPECT_EQ(m.f.s.schedule(0, 20 * ms).next, &m.b);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(m.f.s.queued(1).empty());
  EXPECT_EQ(m.f.s.schedule(1, 20 * ms).next, nullptr);
  EXPECT_EQ(m.a.state, VState::Done);
}

// A wake between the locks is not lost (the vCPU is Runnable: it stays pending), and the target,
// scheduling meanwhile, finds nothing half-moved; once queued the vCPU runs there only.
TEST(CreditInvariant, AWakeBetweenTheTwoLocksOfAMoveStaysPending) {
  MoveFixture m;
  m.f.s.between_locks_hook = [&](SchedVcpu& v) {
    m.f.s.wake(v, 20 * ms);
    EXPECT_EQ(m.f.s.schedule(1, 20 * ms).next, nullptr) << "not queued on the target yet";
  };
  EXPECT_EQ(m.f.s.schedule(0, 20 * ms).next, &m.b);
  m.f.s.between_locks_hook = nullptr;
  EXPECT_EQ(m.f.s.queued(1), std::vector<SchedVcpu*>{&m.a});
  EXPECT_EQ(m.f.s.schedule(1, 21 * ms).next, &m.a);
  EXPECT_FALSE(m.f.s.block(1, m.a, 22 * ms)) << "the wake was pending";
  EXPECT_EQ(m.a.stats.pcpus_used.to_string(), "0-1");
}

// Threads as pCPUs, as PcpuExecutor runs them, over shared unpinned vCPUs: ticks (which move
// running vCPUs to idlers through schedule()'s two locks), steals, wakes from any thread, blocks,
// yields, a cap that parks, a finish. A vCPU is "in guest" on its pCPU from the schedule() that
// returned it to the next schedule() there; it must never be in guest on two at once, and the
// pCPU that runs it is its processor. No time is asserted: fixed step counts.
TEST(CreditInvariant, ConcurrentPcpusNeverRunAVcpuTwice) {
  constexpr uint32_t kPcpus = 4;
  constexpr int kSteps = 100000;
  CreditParams params;
  params.migration_delay_ns = 2 * ms;  // some steals, and idlers left for the tick's moves
  // Sleeping locks: more threads than host cores would make spinning ones convoy.
  Fixture f(kPcpus, params, "spin-yield");
  std::vector<SchedVcpu*> vs;
  for (int dom = 0; dom < 3; dom++) {
    auto& d = f.s.add_domain(256, dom == 2 ? 50 : 0);
    for (int i = 0; i < 2; i++) vs.push_back(&f.vcpu(d));
  }
  f.s.start(0, [](const SchedVcpu& v) { return v.id % 2; });  // pCPUs 2 and 3 start idle
  std::vector<std::atomic<int>> in_guest(vs.size());
  std::atomic<uint64_t> clock{0}, double_runs{0}, elsewhere{0};
  std::atomic<uint32_t> ready{0};
  auto pcpu = [&](uint32_t p) {
    uint64_t seed = 1000 + p;
    auto rnd = [&](uint64_t n) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      return (seed >> 33) % n;
    };
    ready.fetch_add(1);
    while (ready.load() < kPcpus) std::this_thread::yield();
    SchedVcpu* cur = nullptr;
    for (int step = 0; step < kSteps; step++) {
      if (step % 16 == 0) std::this_thread::yield();  // interleave more on a small host
      const uint64_t now = clock.fetch_add(rnd(ms / 4));
      switch (f.s.need_resched(p) ? 7 : rnd(8)) {
        case 0:
        case 1: f.s.tick(p, now); break;
        case 2:
          if (cur) f.s.block(p, *cur, now);
          break;
        case 3: f.s.wake(*vs[rnd(vs.size())], now); break;
        case 4:
          if (cur) f.s.yield(p, *cur);
          break;
        case 5:
          if (p == 0 && step == kSteps / 2) f.s.finish(*vs[5], now);
          break;
        default:
          if (cur) in_guest[cur->id].fetch_sub(1);  // out of guest mode, then schedule
          cur = f.s.schedule(p, now).next;
          if (!cur) break;
          if (in_guest[cur->id].fetch_add(1) != 0) double_runs++;
          if (cur->processor.load() != p) elsewhere++;
          break;
      }
    }
    if (cur) in_guest[cur->id].fetch_sub(1);
  };
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < kPcpus; p++) threads.emplace_back(pcpu, p);
  for (auto& t : threads) t.join();
  EXPECT_EQ(double_runs.load(), 0u) << "a vCPU was in guest on two pCPUs at once";
  EXPECT_EQ(elsewhere.load(), 0u) << "a pCPU ran a vCPU whose processor is another";
  uint64_t moves = 0, migrations = 0;
  for (uint32_t p = 0; p < kPcpus; p++) moves += f.s.pcpu_stats(p).migrate_running;
  for (SchedVcpu* v : vs) migrations += v->stats.migrations;
  EXPECT_GT(moves, 0u) << "no tick moved a running vCPU: the two-lock path was not exercised";
  EXPECT_GT(migrations, 0u);
}

// csched_schedule: a vCPU marked migrating (_VPF_migrating) is not runnable there, so the
// ratelimit does not keep it even when vcpu_migrate's _csched_cpu_pick then leaves it where it
// is (the idler it was marked for got busy meanwhile): the head of the queue runs.
TEST(CreditRule, AVcpuMarkedMigratingThatStaysIsNotKeptByTheRatelimit) {
  CreditParams p = no_ratelimit(Balance::None);
  p.ratelimit_ns = 100 * ms;  // a is within its ratelimit throughout
  Fixture f(2, p);
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  auto& c = f.vcpu(d, 1);
  f.s.start(0, [](const SchedVcpu& v) { return v.id == 2 ? 1u : 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  ASSERT_EQ(f.s.schedule(1, 0).next, &c);
  ASSERT_TRUE(f.s.block(1, c, 0));
  ASSERT_EQ(f.s.schedule(1, 0).next, nullptr);
  f.s.tick(0, 10 * ms);  // activates a
  f.s.tick(0, 20 * ms);  // pCPU 1 idles: a is marked migrating
  ASSERT_EQ(f.s.pcpu_stats(0).migrate_running, 1u);
  f.s.wake(c, 20 * ms);
  ASSERT_EQ(f.s.schedule(1, 20 * ms).next, &c);  // no idler left: a stays on pCPU 0
  EXPECT_EQ(f.s.schedule(0, 21 * ms).next, &b) << "the ratelimit kept a migrating vCPU";
  EXPECT_EQ(a.processor.load(), 0u);
  EXPECT_EQ(f.s.queued(0), std::vector<SchedVcpu*>{&a});
}

// --sched rr: no accounting, so no activation to wait for; the tick moves the running vCPU to
// an idler the same way (the first tick already may).
TEST(CreditRule, UnderRoundRobinTheTickAlsoMovesARunningVcpuToAnIdler) {
  CreditParams p = no_ratelimit(Balance::Xen);
  p.round_robin = true;
  p.migration_delay_ns = 1000 * ms;  // no steals: only the tick can give pCPU 1 work
  Fixture f(2, p);
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  Sim sim(f);
  sim.run(0, 300 * ms);
  EXPECT_GT(f.s.pcpu_stats(1).balance.skipped_hot, 0u) << "pCPU 1 first found b cache-hot";
  EXPECT_EQ(f.s.pcpu_stats(0).migrate_running, 1u);
  EXPECT_LE(sim.busy_since[1], f.s.params().tick_ns) << "pCPU 1 idled on";
  EXPECT_EQ(a.stats.migrations + b.stats.migrations, 1u);
}
