#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <map>

#include "fake_p2m.hpp"
#include "vmm/hypercall.hpp"

using namespace kvmscale::vmm;
using kvmscale::mm::GuestMemory;

namespace {

struct HcallFixture : testing::Test {
  GuestMemory mem{8 << 20};
  kvmscale::mm::SoftTlb tlb;
  int safe_points = 0;
  std::function<void()> safe_point = [this] { safe_points++; };
  kvmscale::test::FakeP2m p2m;
  ks_hcall_page& page = *mem.object_at<ks_hcall_page>(KS_HCALL_GPA);
  VcpuStats stats;
  ConsoleLog console;
  Action call(uint64_t op, uint64_t a0 = 0, uint64_t a1 = 0, uint32_t nr_vcpus = 2) {
    page.op = op;
    page.args[0] = a0;
    page.args[1] = a1;
    page.ret = 12345;
    return dispatch_hypercall(kvmscale::mm::GuestView(mem, 3, &tlb, &safe_point, &p2m), page, 0,
                              nr_vcpus, stats, console);
  }
  void put(uint64_t gpa, const char* s) {
    std::strcpy(reinterpret_cast<char*>(mem.translate(gpa, std::strlen(s) + 1)), s);
  }
};
}  // namespace

// Exit handlers reach guest RAM only through the pCPU's TLB, after a safe point; a page given
// back to the host without a flush shows up as a stale hit, a flush prevents it.
TEST_F(HcallFixture, GuestAccessGoesThroughTheTlbAndCatchesAMissedFlush) {
  put(0x400ffe, "hey");  // spans two pages
  call(KS_HC_CONSOLE, 0x400ffe, 3);
  EXPECT_EQ(safe_points, 1);
  EXPECT_EQ(tlb.misses(), 2u);
  call(KS_HC_CONSOLE, 0x400ffe, 3);
  EXPECT_EQ(tlb.hits(), 2u);
  EXPECT_EQ(tlb.stale_hits(), 0u);
  p2m.by_page[0x401] = 1;  // fenced: a use before the flush completes is allowed
  call(KS_HC_CONSOLE, 0x400ffe, 3);
  EXPECT_EQ(tlb.stale_hits(), 0u);
  p2m.by_page[0x401] = 2;  // the flush completed, but nobody flushed this pCPU
  call(KS_HC_CONSOLE, 0x400ffe, 3);
  EXPECT_EQ(tlb.stale_hits(), 1u);
  p2m.by_page[0x401] = 4;  // reclaimed again, this time with the flush
  tlb.invalidate_vm(3);
  call(KS_HC_CONSOLE, 0x400ffe, 3);
  EXPECT_EQ(tlb.stale_hits(), 1u);
  // Out-of-range accesses never reach the TLB.
  const uint64_t misses = tlb.misses();
  EXPECT_EQ(call(KS_HC_CONSOLE, (8 << 20) - 1, 2).kind, Action::Kind::Resume);
  EXPECT_EQ(page.ret, KS_EFAULT);
  EXPECT_EQ(tlb.misses(), misses);
}

TEST_F(HcallFixture, ConsoleWritesValidatedRanges) {
  put(0x100000, "hello");
  EXPECT_EQ(call(KS_HC_CONSOLE, 0x100000, 5).kind, Action::Kind::Resume);
  EXPECT_EQ(page.ret, 5);
  EXPECT_EQ(console.text(), "hello");
  call(KS_HC_CONSOLE, mem.size() - 2, 4);
  EXPECT_EQ(page.ret, KS_EFAULT);
  call(KS_HC_CONSOLE, ~0ull - 1, 4);
  EXPECT_EQ(page.ret, KS_EFAULT);
  call(KS_HC_CONSOLE, 0x100000, KS_CONSOLE_MAX + 1);
  EXPECT_EQ(page.ret, KS_EINVAL);
  EXPECT_EQ(console.text(), "hello");
  EXPECT_EQ(stats.hcall_errors, 3u);
  EXPECT_EQ(stats.hcalls[KS_HC_CONSOLE], 4u);
}

TEST_F(HcallFixture, ConsoleIsCapped) {
  for (size_t i = 0; i < ConsoleLog::kCap / KS_CONSOLE_MAX + 4; i++)
    call(KS_HC_CONSOLE, 0x100000, KS_CONSOLE_MAX);
  EXPECT_EQ(console.text().size(), ConsoleLog::kCap);
  EXPECT_EQ(console.dropped(), 4u * KS_CONSOLE_MAX);
}

TEST_F(HcallFixture, UnknownOpIsEnosys) {
  EXPECT_EQ(call(999).kind, Action::Kind::Resume);
  EXPECT_EQ(page.ret, KS_ENOSYS);
  EXPECT_EQ(stats.hcalls[KS_HC_OP_COUNT], 1u);
}

TEST_F(HcallFixture, WakeIsBoundedToTheVm) {
  Action a = call(KS_HC_WAKE, 1, 0, 2);
  EXPECT_EQ(a.kind, Action::Kind::Wake);
  EXPECT_EQ(a.value, 1u);
  EXPECT_EQ(page.ret, 0);
  EXPECT_EQ(call(KS_HC_WAKE, 2, 0, 2).kind, Action::Kind::Resume);
  EXPECT_EQ(page.ret, KS_EINVAL);
  EXPECT_EQ(call(KS_HC_WAKE, ~0ull, 0, 2).kind, Action::Kind::Resume);
}

TEST_F(HcallFixture, ControlOpsBecomeActions) {
  EXPECT_EQ(call(KS_HC_YIELD).kind, Action::Kind::Yield);
  Action b = call(KS_HC_BLOCK, 5000);
  EXPECT_EQ(b.kind, Action::Kind::Block);
  EXPECT_EQ(b.value, 5000u);
  EXPECT_EQ(page.ret, 12345) << "block's result is stored by the executor when it ends";
  Action e = call(KS_HC_EXIT, 7);
  EXPECT_EQ(e.kind, Action::Kind::Exit);
  EXPECT_EQ(e.value, 7u);
}

TEST_F(HcallFixture, BootDoneRecordsFirstTimeOnly) {
  call(KS_HC_BOOT_DONE);
  uint64_t first = stats.boot_done_ns;
  EXPECT_GT(first, 0u);
  call(KS_HC_BOOT_DONE);
  EXPECT_EQ(stats.boot_done_ns, first);
}

TEST_F(HcallFixture, ClockIsMonotonic) {
  call(KS_HC_CLOCK);
  int64_t a = page.ret;
  call(KS_HC_CLOCK);
  EXPECT_GT(a, 0);
  EXPECT_GE(page.ret, a);
}

TEST_F(HcallFixture, MetricNamesAreValidated) {
  put(0x100000, "iterations");
  call(KS_HC_METRIC_NAME, 3, 0x100000);
  EXPECT_EQ(page.ret, 0);
  EXPECT_EQ(stats.metric_names[3], "iterations");
  call(KS_HC_METRIC_NAME, KS_METRIC_SLOTS, 0x100000);
  EXPECT_EQ(page.ret, KS_EINVAL);
  call(KS_HC_METRIC_NAME, 0, ~0ull);
  EXPECT_EQ(page.ret, KS_EFAULT);
  put(0x101000, "bad name\"");
  call(KS_HC_METRIC_NAME, 0, 0x101000);
  EXPECT_EQ(page.ret, KS_EINVAL);
  put(0x102000, "");
  call(KS_HC_METRIC_NAME, 0, 0x102000);
  EXPECT_EQ(page.ret, KS_EINVAL);
  std::memset(mem.translate(0x103000, 64), 'a', 64);  // no NUL within the limit
  call(KS_HC_METRIC_NAME, 0, 0x103000);
  EXPECT_EQ(page.ret, KS_EINVAL);
  EXPECT_EQ(stats.metric_names[0], "");
}

// A hostile guest's console bytes, echoed with --console, cannot drive the user's terminal: every
// byte outside printable ASCII, newline and tab is shown as \xNN; the record keeps them as written.
TEST(ConsoleEcho, ControlBytesFromAGuestAreShownEscaped) {
  ConsoleLog log(true, "[vm0] ");
  const std::string hostile =
      "hi\x1b]0;owned\x07\x1b[31mred\x9b"
      "2J\r\x7f\tok\n";
  testing::internal::CaptureStderr();
  log.write(hostile);
  const std::string echoed = testing::internal::GetCapturedStderr();
  EXPECT_EQ(echoed, "[vm0] hi\\x1b]0;owned\\x07\\x1b[31mred\\x9b2J\\x0d\\x7f\tok\n");
  EXPECT_EQ(log.text(), hostile) << "the record keeps the guest's bytes";
}
