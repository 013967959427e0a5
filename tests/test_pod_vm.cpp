// PodVm on real memory (userfaultfd, no KVM): a write forced into the zero check's windows by a
// test hook is never lost. Xen makes the entry PoD (not present) before the full check
// (p2m_pod_zero_check); kvmscale fences with userfaultfd write-protection, so a write after the
// fence waits until the granule is decided and then lands on the kept page or on a fresh one.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>

#include "app/pod_runtime.hpp"
#include "locks/any_lock.hpp"
#include "mm/fault_service.hpp"
#include "mm/guest_memory.hpp"
#include "mm/guest_view.hpp"
#include "mm/pod_vm.hpp"
#include "mm/userfaultfd.hpp"
#include "sched/p2m.hpp"

using namespace kvmscale;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kPage = 4096, kPages = 64;

struct Region {
  Region() {
    void* p =
        mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap");
    base = static_cast<uint8_t*>(p);
  }
  ~Region() { munmap(base, kPages * kPage); }
  uint8_t* base;
};

// Runs a PoD boot (every page written once with zeros, target 8 pages: each populate zero-checks
// an older page) and, the first time the zero check reaches `at`, writes `value` at `offset` of
// that granule (8-aligned) from another thread. Returns what is there afterwards.
uint64_t boot_with_a_write_at(mm::Pod::HookPoint at, uint64_t offset, uint64_t value) {
  std::unique_ptr<mm::Userfaultfd> uffd;
  try {
    uffd = std::make_unique<mm::Userfaultfd>();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "userfaultfd unavailable: " << e.what();
    return 0;
  }
  Region r;
  mm::PodParams pp;
  pp.target = 8;
  sched::P2m p2m(0, {}, nullptr);  // no contexts hold the VM: a flush completes the epochs only
  mm::PodVm pod(r.base, kPages * kPage, kPage, pp, *uffd,
                std::make_unique<locks::AnyLock>(locks::Strategy::Ticket), p2m);
  p2m.attach_pod(pod, nullptr);
  std::atomic<uint8_t*> target{nullptr};
  std::thread writer;                  // made (and maybe joined) by the hook on a fault thread
  std::atomic<bool> hook_done{false};  // publishes `writer` to this thread (TSan sees no kernel)
  pod.set_test_hook([&](mm::Pod::HookPoint p, uint64_t g) {
    if (p != at || target.load()) return;
    target = pod.granule_addr(g);
    writer = std::thread([&, t = target.load()] {
      // Blocks while the granule is fenced. Atomic: the ordering with the other threads' writes
      // goes through the kernel's fault handling, which TSan cannot see.
      __atomic_store_n(reinterpret_cast<uint64_t*>(t + offset), value, __ATOMIC_RELAXED);
    });
    if (at == mm::Pod::HookPoint::AfterQuickCheck)
      writer.join();  // not fenced yet: the write lands now, before the fence
    else
      std::this_thread::sleep_for(30ms);  // fenced: the writer is blocked on write-protection
    hook_done.store(true, std::memory_order_release);
  });
  {
    mm::FaultService faults(*uffd, 2, [&](const mm::FaultEvent& ev) { pod.handle(ev); });
    // The boot: every word zeroed (word by word, atomically, for TSan: see the writer).
    auto* words = reinterpret_cast<uint64_t*>(r.base);
    for (uint64_t w = 0; w < kPages * kPage / 8; w++)
      __atomic_store_n(&words[w], 0, __ATOMIC_RELAXED);
    if (target.load()) {
      while (!hook_done.load(std::memory_order_acquire)) std::this_thread::yield();
      if (writer.joinable()) writer.join();
    }
    EXPECT_NE(target.load(), nullptr) << "the hook point was never reached";
    // May fault: the granule is populated again.
    uint8_t* t = target.load();
    return t ? __atomic_load_n(reinterpret_cast<uint64_t*>(t + offset), __ATOMIC_RELAXED) : 0;
  }
}

}  // namespace

TEST(PodVm, AWriteBetweenTheQuickCheckAndTheFenceIsKept) {
  EXPECT_EQ(boot_with_a_write_at(mm::Pod::HookPoint::AfterQuickCheck, 2000, 0xabcdefull),
            0xabcdefull)
      << "the full check must see it and restore the granule";
}

TEST(PodVm, AWriteBetweenTheFullCheckAndTheDiscardIsNeverLost) {
  EXPECT_EQ(boot_with_a_write_at(mm::Pod::HookPoint::BeforeDiscard, 96, 0x1234567ull), 0x1234567ull)
      << "a write that landed before MADV_DONTNEED would be thrown away";
}

// An exit handler's buffer stays present until its handling ends (mm::GuestView holds its pages,
// as Xen's __hvm_copy holds a page reference that p2m_pod_zero_check respects). The handler
// translates page A; another access populates page Z; the handler then translates page B with
// the cache empty, so B's populate zero-checks the ring from its oldest slot: A, then Z. A is
// skipped, Z reclaimed. Before, A was reclaimed under the handler, whose read of it then faulted
// on its own thread (while holding the console lock: the --sched host hang of issue 11).
TEST(PodVm, APageAnExitHandlerHoldsIsNeverReclaimedUnderIt) {
  std::unique_ptr<mm::Userfaultfd> uffd;
  try {
    uffd = std::make_unique<mm::Userfaultfd>();
  } catch (const std::exception& e) {
    GTEST_SKIP() << "userfaultfd unavailable: " << e.what();
  }
  constexpr uint64_t kBase = 1ull << 20;  // PoD covers guest-physical [1M, 2M)
  mm::GuestMemory mem(2ull << 20);
  mm::PodParams pp;
  pp.target = 2;
  bool out_of_memory = false;
  sched::P2m p2m(0, {}, nullptr);
  mm::PodVm pod(mem.host_base() + kBase, kBase, kPage, pp, *uffd,
                std::make_unique<locks::AnyLock>(locks::Strategy::Ticket), p2m, kBase,
                [&] { out_of_memory = true; });
  p2m.attach_pod(pod, nullptr);
  const uint64_t a = kBase + 5 * kPage, z = kBase + 9 * kPage, b = kBase + 6 * kPage;
  mm::SoftTlb tlb;
  {
    mm::GuestView handler(mem, 0, &tlb, nullptr, &p2m);
    const uint8_t* pa = handler.translate(a, 8);
    ASSERT_NE(pa, nullptr);
    ASSERT_NE(mm::GuestView(mem, 0, &tlb, nullptr, &p2m).translate(z, 8), nullptr);
    ASSERT_NE(handler.translate(b, 8), nullptr);
    EXPECT_FALSE(out_of_memory) << "Z was there to reclaim";
    EXPECT_EQ(p2m.epoch(a), 0u) << "A was fenced (and reclaimed) while the handler held it";
    EXPECT_EQ(p2m.epoch(z), 2u) << "Z should have been reclaimed instead";
    unsigned char present = 0;
    ASSERT_EQ(mincore(const_cast<uint8_t*>(pa) - (a % kPage), kPage, &present), 0);
    EXPECT_EQ(present & 1, 1) << "A is gone: reading it would fault";
    EXPECT_EQ(pod.report()["referenced_skipped"], 1u);
  }
  // Released with the handler: Z's populate again reclaims B, the ring's one entry left.
  ASSERT_NE(mm::GuestView(mem, 0, &tlb, nullptr, &p2m).translate(z, 8), nullptr);
  EXPECT_FALSE(out_of_memory);
  EXPECT_EQ(p2m.epoch(b), 2u) << "B, no longer held, is a candidate again";
}

// p2m_pod_zero_check_superpage's quick check reads the first 16 words of every 4 KiB page of a
// 2 MiB granule; a granule dirty at the start of its second page is rejected there, with no
// fence and no flush (it used to pass, reading only the granule's first 128 bytes, and cost a
// flush before the full check restored it). Dirt past a page's first 128 bytes still passes.
TEST(PodVm, TheQuickCheckReadsTheStartOfEvery4KPageOfAGranule) {
  std::unique_ptr<mm::Userfaultfd> uffd;
  try {
    uffd = std::make_unique<mm::Userfaultfd>();
  } catch (const std::exception& e) {
    GTEST_SKIP() << "userfaultfd unavailable: " << e.what();
  }
  constexpr uint64_t kGranule = 2ull << 20;
  void* m = mmap(nullptr, 2 * kGranule, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(m, MAP_FAILED);
  auto* base = static_cast<uint8_t*>(m);
  std::memset(base, 0, 2 * kGranule);    // present before registration: reads never fault
  base[kPage + 64] = 1;                  // granule 0: inside page 1's first 128 bytes
  base[kGranule + 5 * kPage + 200] = 1;  // granule 1: past page 5's first 128 bytes
  {
    mm::PodParams pp;
    pp.target = 1;
    sched::P2m p2m(0, {}, nullptr);
    mm::PodVm pod(base, 2 * kGranule, kGranule, pp, *uffd,
                  std::make_unique<locks::AnyLock>(locks::Strategy::Ticket), p2m);
    EXPECT_FALSE(pod.quick_zero(0));
    EXPECT_TRUE(pod.quick_zero(1)) << "as 4.7: the full check (after the fence) finds it";
    EXPECT_FALSE(pod.full_zero(1));
  }
  munmap(m, 2 * kGranule);
}

// "One fault thread per pCPU" (--fault-threads 0) holds at the study's 192 pCPUs; the default
// stops at kMaxDefaultFaultThreads. An explicit --fault-threads is taken as given.
TEST(PodRuntime, TheDefaultIsOneFaultThreadPerPcpu) {
  app::RunConfig cfg;
  cfg.sched = "credit";
  for (uint32_t p : {1u, 2u, 64u, 65u, 192u, 1024u}) {
    cfg.pcpus = p;
    EXPECT_EQ(app::PodRuntime::fault_threads_for(cfg), p);
  }
  cfg.pcpus = 4096;
  EXPECT_EQ(app::PodRuntime::fault_threads_for(cfg), app::PodRuntime::kMaxDefaultFaultThreads);
  cfg.fault_threads = 3;
  EXPECT_EQ(app::PodRuntime::fault_threads_for(cfg), 3u);
}
