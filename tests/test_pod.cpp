// PoD policy with fake memory, and the software TLB's detection of a missed flush.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>

#include "fake_p2m.hpp"
#include "mm/guest_memory.hpp"
#include "mm/guest_view.hpp"
#include "mm/pod.hpp"
#include "mm/soft_tlb.hpp"

using namespace kvmscale::mm;

namespace {

// Fake memory: each granule is zero, "quick-zero but dirty further in", or non-zero.
struct FakeMem : PodBackend {
  enum Kind { Zero, TailDirty, Dirty };
  std::map<uint64_t, Kind> kind;  // default Zero
  std::set<uint64_t> fenced_now, discarded;
  std::vector<std::string> log;
  uint64_t flushes = 0;
  Kind k(uint64_t g) const {
    auto it = kind.find(g);
    return it == kind.end() ? Zero : it->second;
  }
  bool quick_zero(uint64_t g) override { return k(g) != Dirty; }
  bool full_zero(uint64_t g) override {
    EXPECT_TRUE(fenced_now.count(g)) << "full check of an unfenced granule " << g;
    return k(g) == Zero;
  }
  void fence(uint64_t g) override {
    fenced_now.insert(g);
    log.push_back("fence " + std::to_string(g));
  }
  void unfence(uint64_t g) override {
    EXPECT_GT(flushes, 0u);
    fenced_now.erase(g);
  }
  void discard(uint64_t g) override {
    EXPECT_EQ(k(g), Zero) << "reclaim must never take a non-zero granule";
    fenced_now.erase(g);
    discarded.insert(g);
  }
  void flush() override {
    flushes++;
    log.push_back("flush");
  }
};

PodParams params(uint64_t max, uint64_t target, uint32_t stride = 16, uint32_t limit = 1024,
                 PodReclaim reclaim = PodReclaim::Batched) {
  PodParams p;
  p.reclaim = reclaim;
  p.max = max;
  p.target = target;
  p.stride = stride;
  p.limit = limit;
  return p;
}

}  // namespace

TEST(Pod, PopulatesUnderTargetWithoutReclaim) {
  FakeMem mem;
  Pod pod(params(100, 10), mem);
  for (uint64_t g = 0; g < 10; g++) EXPECT_EQ(pod.on_fault(g), Pod::Fault::Populate);
  EXPECT_EQ(pod.populated(), 10u);
  EXPECT_EQ(mem.flushes, 0u);
  EXPECT_EQ(pod.on_fault(3), Pod::Fault::AlreadyPopulated) << "a retried fault is harmless";
  EXPECT_EQ(pod.stats().duplicate_faults, 1u);
}

// --pod-reclaim batched: nothing until the cache is empty, then the whole ring in one batch.
TEST(PodBatched, OverTargetReclaimsRecentZeroPagesInOneBatch) {
  FakeMem mem;
  Pod pod(params(100, 4, 16), mem);
  for (uint64_t g = 0; g < 4; g++) pod.on_fault(g);
  mem.kind[0] = mem.kind[1] = FakeMem::Dirty;  // two written, two still zero
  EXPECT_EQ(pod.on_fault(50), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().eager_checks, 1u);
  EXPECT_EQ(pod.stats().sweeps, 0u) << "the eager ring sufficed";
  EXPECT_EQ(mem.discarded, (std::set<uint64_t>{2, 3}));
  EXPECT_EQ(pod.stats().quick_rejected, 2u);
  EXPECT_EQ(pod.stats().flushes, 1u) << "one flush for the batch";
  EXPECT_EQ(pod.populated(), 3u);
  EXPECT_EQ(pod.entry(2), Pod::Entry::Pod);
  EXPECT_EQ(pod.entry(0), Pod::Entry::Populated);
}

TEST(PodBatched, FencesTheWholeBatchBeforeTheSingleFlush) {
  FakeMem mem;
  Pod pod(params(64, 4, 16), mem);
  for (uint64_t g = 0; g < 4; g++) pod.on_fault(g);
  pod.on_fault(10);
  std::vector<std::string> expect = {"fence 3", "fence 2", "fence 1", "fence 0", "flush"};
  EXPECT_EQ(mem.log, expect) << "newest first, all fenced, then one flush";
}

TEST(PodBatched, QuickZeroButDirtyGranulesAreRestored) {
  FakeMem mem;
  Pod pod(params(64, 2, 16), mem);
  pod.on_fault(0);
  pod.on_fault(1);
  mem.kind[0] = FakeMem::TailDirty;  // passes the 128-byte check, fails the full one
  EXPECT_EQ(pod.on_fault(5), Pod::Fault::Populate);
  EXPECT_EQ(pod.entry(0), Pod::Entry::Populated);
  EXPECT_EQ(pod.stats().restored, 1u);
  EXPECT_EQ(pod.stats().reclaimed, 1u);
  EXPECT_TRUE(mem.fenced_now.empty()) << "nothing is left fenced";
}

TEST(PodBatched, EmergencySweepGoesDownwardsFromWhereItStopped) {
  FakeMem mem;
  // 64 granules, target 48, batches of 8, limit 16. Everything populated is dirty except 10 and 3,
  // which are older than the eager ring (the last 32 populated: 16..47).
  Pod pod(params(64, 48, 8, 16), mem);
  for (uint64_t g = 0; g < 48; g++) pod.on_fault(g);
  for (uint64_t g = 0; g < 48; g++) mem.kind[g] = FakeMem::Dirty;
  mem.kind[10] = mem.kind[3] = FakeMem::Zero;
  EXPECT_EQ(pod.on_fault(60), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().sweeps, 1u);
  // From 63 downwards it finds 10 in the batch 15..8 and stops there (past its limit, found one).
  EXPECT_EQ(mem.discarded, std::set<uint64_t>{10});
  EXPECT_EQ(pod.entry(3), Pod::Entry::Populated);
  // The next sweep continues below where this one stopped and finds 3.
  mem.kind[60] = FakeMem::Dirty;
  EXPECT_EQ(pod.on_fault(61), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().sweeps, 2u);
  EXPECT_EQ(mem.discarded, (std::set<uint64_t>{10, 3}));
  EXPECT_LE(pod.stats().scanned, 64u + 32u + 8u) << "the second sweep started at 7, not at 63";
}

TEST(Pod, OutOfPodMemoryWhenNothingIsZero) {
  for (PodReclaim r : {PodReclaim::Xen, PodReclaim::Batched}) {
    SCOPED_TRACE(pod_reclaim_name(r));
    FakeMem mem;
    Pod pod(params(32, 8, 16, 1024, r), mem);
    for (uint64_t g = 0; g < 8; g++) {
      pod.on_fault(g);
      mem.kind[g] = FakeMem::Dirty;
    }
    EXPECT_EQ(pod.on_fault(20), Pod::Fault::OutOfMemory);
    EXPECT_EQ(pod.stats().out_of_memory, 1u);
    EXPECT_EQ(pod.populated(), 8u);
    EXPECT_TRUE(mem.discarded.empty());
    EXPECT_EQ(pod.stats().flushes, 0u) << "no entry changed: no flush";
  }
}

TEST(Pod, PopulatedNeverExceedsTarget) {
  for (PodReclaim r : {PodReclaim::Xen, PodReclaim::Batched}) {
    SCOPED_TRACE(pod_reclaim_name(r));
    FakeMem mem;
    Pod pod(params(4096, 512, 16, 1024, r), mem);
    // A Windows-like boot: touch every granule in order; each is zero, so reclaim keeps up.
    for (uint64_t g = 0; g < 4096; g++) {
      ASSERT_NE(pod.on_fault(g), Pod::Fault::OutOfMemory) << g;
      ASSERT_LE(pod.populated(), 512u);
      ASSERT_EQ(pod.count() + pod.populated(), 512u)
          << "the cache and the populated are the target";
      ASSERT_EQ(pod.entry_count() + pod.populated(), 4096u);
    }
    EXPECT_EQ(pod.stats().populates, 4096u);
    EXPECT_EQ(pod.stats().reclaimed, 4096u - pod.populated());
  }
}

// --pod-reclaim xen (the default): p2m_pod_demand_populate / pod_eager_reclaim of Xen 4.7.
TEST(PodXen, EveryPopulateZeroChecksTheOldestRingSlotWhileEntriesOutnumberTheCache) {
  FakeMem mem;
  Pod pod(params(1000, 100, 16, 1024, PodReclaim::Xen), mem);
  for (uint64_t g = 0; g < 32; g++) ASSERT_EQ(pod.on_fault(g), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().eager_checks, 32u) << "entry_count > count on every populate";
  EXPECT_EQ(pod.stats().scanned, 0u) << "the ring had no entry yet";
  for (uint64_t g = 32; g < 232; g++) {
    ASSERT_EQ(pod.on_fault(g), Pod::Fault::Populate);
    // One zero check per populate, of the granule populated 32 populates ago, one flush each.
    ASSERT_EQ(pod.stats().scanned, g - 31);
    ASSERT_EQ(pod.entry(g - 32), Pod::Entry::Pod) << "the oldest ring slot was reclaimed";
    ASSERT_EQ(pod.stats().flushes, g - 31) << "about one flush per populate";
    ASSERT_EQ(pod.count() + pod.populated(), 100u);
  }
  EXPECT_EQ(pod.populated(), 32u) << "the cache never ran dry";
  EXPECT_GT(pod.count(), 0u);
  EXPECT_EQ(pod.stats().sweeps, 0u) << "no sweep while the cache has pages";
  EXPECT_EQ(pod.stats().zero_checks, pod.stats().scanned) << "one granule per zero check";
}

TEST(PodXen, ADirtyOldestSlotCostsNoFlush) {
  FakeMem mem;
  Pod pod(params(1000, 100, 16, 1024, PodReclaim::Xen), mem);
  for (uint64_t g = 0; g < 32; g++) pod.on_fault(g);
  mem.kind[0] = FakeMem::Dirty;
  pod.on_fault(40);
  EXPECT_EQ(pod.stats().quick_rejected, 1u);
  EXPECT_EQ(pod.stats().flushes, 0u) << "p2m_tlb_flush_sync flushes only when an entry changed";
  EXPECT_EQ(pod.entry(0), Pod::Entry::Populated);
  pod.on_fault(41);
  EXPECT_EQ(pod.entry(1), Pod::Entry::Pod) << "the next populate checks the next oldest";
  EXPECT_EQ(pod.stats().flushes, 1u);
}

TEST(PodXen, GoesOnThroughTheRingOnlyWhileTheCacheIsEmpty) {
  FakeMem mem;
  Pod pod(params(1000, 40, 16, 1024, PodReclaim::Xen), mem);
  for (uint64_t g = 0; g < 40; g++) {
    mem.kind[g] = FakeMem::Dirty;
    ASSERT_EQ(pod.on_fault(g), Pod::Fault::Populate);
  }
  ASSERT_EQ(pod.count(), 0u);
  // The ring holds 8..39, oldest first; only 20 is zero.
  mem.kind[20] = FakeMem::Zero;
  const uint64_t scanned = pod.stats().scanned;
  EXPECT_EQ(pod.on_fault(100), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().scanned - scanned, 13u) << "8..20: stop as soon as the cache has a page";
  EXPECT_EQ(pod.stats().flushes, 1u);
  EXPECT_EQ(pod.stats().sweeps, 0u);
  EXPECT_EQ(pod.entry(20), Pod::Entry::Pod);
  EXPECT_EQ(pod.entry(21), Pod::Entry::Populated) << "21 stays in the ring, unchecked";
}

TEST(PodXen, EmergencySweepOnlyWithAnEmptyCacheBatchesOfStrideOneFlushEach) {
  FakeMem mem;
  Pod pod(params(4096, 2048, 16, 1024, PodReclaim::Xen), mem);
  for (uint64_t g = 0; g < 2048; g++) {
    mem.kind[g] = FakeMem::Dirty;
    ASSERT_EQ(pod.on_fault(g), Pod::Fault::Populate);
  }
  ASSERT_EQ(pod.stats().sweeps, 0u);
  mem.kind[1500] = FakeMem::Zero;
  mem.kind[1700] = FakeMem::TailDirty;  // passes the quick check: its batch flushes too
  mem.kind[1000] = FakeMem::Zero;       // more than `limit` below the start
  const uint64_t scanned = pod.stats().scanned, checks = pod.stats().zero_checks;
  EXPECT_EQ(pod.on_fault(3000), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().sweeps, 1u) << "the whole ring was dirty and the cache empty";
  // From max_guest 2047 downwards to limit 1023, then one more step once the cache had a page.
  EXPECT_EQ(pod.stats().scanned - scanned, 32u + (2047u - 1022u + 1u));
  EXPECT_EQ(mem.discarded, std::set<uint64_t>{1500});
  EXPECT_EQ(pod.stats().restored, 1u);
  EXPECT_EQ(pod.stats().flushes, 2u) << "two batches changed an entry: one flush each";
  EXPECT_EQ(pod.stats().zero_checks - checks, 32u + 65u)
      << "32 single-granule checks of the ring, then 1026 granules in batches of 16";
  // The next sweep continues below where this one stopped.
  mem.kind[3000] = FakeMem::Dirty;
  EXPECT_EQ(pod.on_fault(3001), Pod::Fault::Populate);
  EXPECT_EQ(pod.stats().sweeps, 2u);
  EXPECT_TRUE(mem.discarded.count(1000));
}

TEST(Pod, RejectsBadParameters) {
  FakeMem mem;
  EXPECT_THROW(Pod(params(10, 0), mem), std::invalid_argument);
  EXPECT_THROW(Pod(params(10, 11), mem), std::invalid_argument);
  EXPECT_THROW(Pod(params(10, 5, 0), mem), std::invalid_argument);
}

// The software TLB's stale-hit detection, through GuestView (the code exit handlers use), with
// the p2m's epochs (mm/p2m_view.hpp): odd = fenced, even again = the flush completed.
TEST(GuestView, AUseAfterTheFenceButBeforeTheFlushCompletedIsNotStale) {
  GuestMemory mem(8ull << 20);
  SoftTlb tlb;
  kvmscale::test::FakeP2m ep;
  GuestView view(mem, 1, &tlb, nullptr, &ep);
  const uint64_t gpa = 5ull << 20;
  ASSERT_NE(view.translate(gpa, 8), nullptr);  // cached at epoch 0
  ep.by_page[gpa / 4096] = 1;                  // fenced; the flush has not reached us yet
  view.translate(gpa, 8);
  EXPECT_EQ(tlb.stale_hits(), 0u) << "Xen allows this use: the flush is still on its way";
  ep.by_page[gpa / 4096] = 2;  // the flush completed, but it never invalidated this TLB
  view.translate(gpa, 8);
  EXPECT_EQ(tlb.stale_hits(), 1u) << "a use after the flush that should have removed it";
  view.translate(gpa, 8);
  EXPECT_EQ(tlb.stale_hits(), 1u) << "refilled: counted once";
}

TEST(GuestView, NoTranslationOfAFencedPageIsCached) {
  GuestMemory mem(8ull << 20);
  SoftTlb tlb;
  kvmscale::test::FakeP2m ep;
  GuestView view(mem, 1, &tlb, nullptr, &ep);
  const uint64_t gpa = 5ull << 20;
  ep.by_page[gpa / 4096] = 1;  // fenced
  view.translate(gpa, 8);
  ep.by_page[gpa / 4096] = 2;  // reclaimed and flushed: a translation from the fenced time
  view.translate(gpa, 8);      // would be stale now
  EXPECT_EQ(tlb.stale_hits(), 0u);
}

TEST(SoftTlb, FlushOnlyDropsThatVm) {
  SoftTlb t;
  uint8_t a[1], b[1];
  t.insert(1, 5, a);
  t.insert(2, 6, b);
  t.invalidate_vm(1);
  EXPECT_EQ(t.lookup(1, 5), nullptr);
  ASSERT_NE(t.lookup(2, 6), nullptr);
  EXPECT_EQ(t.lookup(2, 6)->hva, b);
}

// p2m_pod_emergency_sweep ends with reclaim_single = i ? i - 1 : i, and a reclaim_single of 0
// means "start from max_guest": a sweep that stops at granule 1 restarts the next one from the
// top. (It used to start the next sweep at granule 0, scan only that, and declare the VM out of
// PoD memory while a zero granule sat above.)
TEST(PodXen, ASweepThatStoppedAtGranuleOneRestartsTheNextFromTheTop) {
  FakeMem mem;
  PodParams p = params(16, 4, 1, 1, PodReclaim::Xen);
  p.eager_ring = 1;  // the ring only ever holds the latest populate (dirty here)
  Pod pod(p, mem);
  for (uint64_t g : {0, 1, 2, 3, 10, 11}) mem.kind[g] = FakeMem::Dirty;
  for (uint64_t g = 0; g < 4; g++) ASSERT_EQ(pod.on_fault(g), Pod::Fault::Populate);
  mem.kind[2] = FakeMem::Zero;
  // Sweep from max_guest 3, limit 2: reclaims 2, stops at 1 (below the limit with a page).
  ASSERT_EQ(pod.on_fault(10), Pod::Fault::Populate);
  ASSERT_EQ(pod.stats().sweeps, 1u);
  ASSERT_EQ(mem.discarded, std::set<uint64_t>{2});
  mem.kind[3] = FakeMem::Zero;  // the guest zeroed granule 3 meanwhile
  EXPECT_EQ(pod.on_fault(11), Pod::Fault::Populate) << "4.7 restarts from max_guest 10";
  EXPECT_EQ(pod.stats().sweeps, 2u);
  EXPECT_TRUE(mem.discarded.count(3));
  EXPECT_EQ(pod.stats().out_of_memory, 0u);
}

// The batched sweep wraps once over every granule: wherever the last one stopped, a zero
// granule anywhere is found before the VM is declared out of PoD memory.
TEST(PodBatched, ASweepFromWhereTheLastStoppedWrapsToFindAGranuleAbove) {
  FakeMem mem;
  PodParams p = params(16, 4, 1, 1, PodReclaim::Batched);
  p.eager_ring = 1;
  Pod pod(p, mem);
  for (uint64_t g : {0, 1, 2, 3, 10, 11, 12}) mem.kind[g] = FakeMem::Dirty;
  for (uint64_t g : {0, 1, 2, 12}) ASSERT_EQ(pod.on_fault(g), Pod::Fault::Populate);
  mem.kind[12] = FakeMem::Zero;
  ASSERT_EQ(pod.on_fault(10), Pod::Fault::Populate);  // sweep from the top (15): takes 12
  ASSERT_EQ(mem.discarded, std::set<uint64_t>{12});
  mem.kind[10] = FakeMem::Zero;  // above where that sweep stopped
  EXPECT_EQ(pod.on_fault(11), Pod::Fault::Populate);
  EXPECT_TRUE(mem.discarded.count(10));
}
