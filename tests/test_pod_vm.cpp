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

#include "locks/any_lock.hpp"
#include "mm/fault_service.hpp"
#include "mm/pod_vm.hpp"
#include "mm/userfaultfd.hpp"

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
  mm::PodVm pod(r.base, kPages * kPage, kPage, pp, *uffd,
                std::make_unique<locks::AnyLock>(locks::Strategy::Ticket), [] {});
  std::atomic<uint8_t*> target{nullptr};
  std::thread writer;
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
  });
  {
    mm::FaultService faults(*uffd, 2, [&](const mm::FaultEvent& ev) { pod.handle(ev); });
    // The boot: every word zeroed (word by word, atomically, for TSan: see the writer).
    auto* words = reinterpret_cast<uint64_t*>(r.base);
    for (uint64_t w = 0; w < kPages * kPage / 8; w++)
      __atomic_store_n(&words[w], 0, __ATOMIC_RELAXED);
    if (writer.joinable()) writer.join();
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
