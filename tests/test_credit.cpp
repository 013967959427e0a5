// CreditScheduler with fake vCPUs and a virtual clock: deterministic, no KVM, no threads.
#include <gtest/gtest.h>

#include <map>

#include "sched/credit.hpp"

using namespace kvmscale::sched;
using kvmscale::locks::LockPolicy;
using kvmscale::locks::LockRegistry;

namespace {

constexpr uint64_t ms = 1'000'000;

struct Tickles : PcpuSignals {
  std::vector<uint32_t> log;
  void tickle(uint32_t p) override { log.push_back(p); }
};

struct Fixture {
  LockRegistry locks{LockPolicy::parse("ticket", {})};
  Tickles tickles;
  CreditScheduler s;
  Fixture(uint32_t npcpus, CreditParams params = {}) : s(npcpus, params, locks, tickles) {}
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

TEST(Credit, OverVcpusYieldToUnder) {
  Fixture f(1, no_ratelimit(Balance::None));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d);
  auto& b = f.vcpu(d);
  f.s.start(0);
  a.credit = -100;
  a.pri = int(Prio::Over);
  // b (UNDER) is queued behind a; a re-sort on the next accounting generation puts b first.
  f.s.account(0);
  f.s.tick(0, 0);
  EXPECT_EQ(f.s.schedule(0, 0).next, &b);
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
  EXPECT_EQ(dec.until_ns, ms);
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
  EXPECT_EQ(a.state, VState::Runnable);
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

// Balancing: pCPU 0 runs one vCPU and has two queued; pCPU 1 is idle and looks for work.
namespace {
struct BalanceCase {
  Balance balance;
  bool pinned_to_0;
  uint64_t trylocks, skipped_bitmap, skipped_count, steals;
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
  const uint64_t looked = c.balance == Balance::None ? 0 : 1;
  EXPECT_EQ(st.attempts_idle, looked);
  EXPECT_EQ(st.peers_visited, looked);
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
  run_balance_case({Balance::Xen, true, 1, 0, 0, 0});
  run_balance_case({Balance::Xen, false, 1, 0, 0, 1});
}

TEST(CreditBalance, AffinitySkipsPeersWhoseVcpusCannotRunHere) {
  run_balance_case({Balance::Affinity, true, 0, 1, 0, 0});
  run_balance_case({Balance::Affinity, false, 1, 0, 0, 1});
}

TEST(CreditBalance, CountedSkipsOnlyPeersWithOneRunnable) {
  // Three runnable on pCPU 0: counted still try-locks, pinned or not (its blind spot).
  run_balance_case({Balance::Counted, true, 1, 0, 0, 0});
  run_balance_case({Balance::Counted, false, 1, 0, 0, 1});
}

TEST(CreditBalance, HybridSkipsPinnedPeersButStealsUnpinnedWork) {
  // Pinned: the restricted-vCPU bitmap excludes pCPU 1 (no try-lock); unpinned: the queued
  // unrestricted vCPUs make the peer worth a try-lock and the steal happens.
  run_balance_case({Balance::Hybrid, true, 0, 1, 0, 0});
  run_balance_case({Balance::Hybrid, false, 1, 0, 0, 1});
}

TEST(CreditBalance, HybridSkipsALoneVcpuByCount) {
  Fixture f(2, no_ratelimit(Balance::Hybrid));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, -1);
  f.s.start(0, [](const SchedVcpu&) { return 0u; });
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.skipped_count, 1u);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.trylocks, 0u);
}

TEST(CreditBalance, NoneNeverLooks) { run_balance_case({Balance::None, false, 0, 0, 0, 0}); }

TEST(CreditBalance, CountedSkipsALoneVcpu) {
  Fixture f(2, no_ratelimit(Balance::Counted));
  auto& d = f.s.add_domain(256, 0);
  auto& a = f.vcpu(d, 0);
  f.s.start(0);
  ASSERT_EQ(f.s.schedule(0, 0).next, &a);
  EXPECT_EQ(f.s.schedule(1, 0).next, nullptr);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.skipped_count, 1u);
  EXPECT_EQ(f.s.pcpu_stats(1).balance.trylocks, 0u);
}

TEST(CreditBalance, PinnedVcpusNeverRunElsewhere) {
  Fixture f(4, no_ratelimit(Balance::Xen));
  std::vector<SchedVcpu*> vs;
  for (int dom = 0; dom < 4; dom++) {
    auto& d = f.s.add_domain(256, 0);
    for (int i = 0; i < 3; i++) vs.push_back(&f.vcpu(d, (dom * 3 + i) % 4));
  }
  f.s.start(0);
  uint64_t now = 0;
  for (int round = 0; round < 200; round++) {
    uint32_t p = uint32_t(round * 7 % 4);
    now += 3 * ms;
    if (round % 5 == 0) f.s.tick(p, now);
    if (round % 11 == 0) f.s.account(now);
    SchedVcpu* v = f.s.schedule(p, now).next;
    if (v && round % 3 == 0) f.s.block(p, *v, now);
    for (SchedVcpu* w : vs)
      if (w->state == VState::Blocked) f.s.wake(*w, now);
  }
  for (SchedVcpu* v : vs) {
    EXPECT_EQ(v->stats.pcpus_used.count(), v->stats.schedules ? 1u : 0u) << "vCPU " << v->id;
    EXPECT_EQ(v->stats.migrations, 0u);
    if (v->stats.schedules) {
      EXPECT_TRUE(v->affinity == v->stats.pcpus_used);
    }
  }
}
