// Populate-on-demand end to end: real guests zeroing their RAM over a PoD target, userfaultfd
// faults served through io_uring, zero-page reclaim fenced by write-protection, and EPT-like
// flushes as cross-calls. Every run is bounded by its --duration and by ctest's timeout, which
// act as the watchdog: a deadlock fails the test instead of hanging CI.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "kvm_helpers.hpp"

using namespace kvmscale;
using nlohmann::json;

namespace {

app::RunConfig pod_config(uint32_t vms, uint32_t vcpus, const char* target) {
  auto c = test::small_config("boot-zero", vms, vcpus);
  c.mem = 16ull << 20;
  c.pod_target = target;
  // Integrity mode (patterns on 2 of every 8 pages, verified after boot), and every 16 pages
  // CONSOLE hypercalls that read PoD pages around their reclaim, so that the stale-translation
  // check below has translations to check.
  c.guest_args = {0, 8, 16};
  c.duration_ns = 120ull * 1'000'000'000ull;
  return c;
}

// Booted, patterns intact, target respected (never more than one batch over), flushes happened.
void expect_pod_run_ok(const json& r, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_EQ(r["run"]["end_reason"], "all_exited");
  for (const auto& vm : r["vms"]) {
    EXPECT_EQ(vm["state"], "exited") << vm["crash_reason"];
    EXPECT_FALSE(vm["boot_ns"].is_null());
    EXPECT_EQ(vm["metrics"]["pattern_errors"], 0) << "reclaim lost guest data";
    EXPECT_GT(vm["metrics"]["patterns_checked"].get<uint64_t>(), 0u);
    const json& pod = vm["pod"];
    EXPECT_LE(pod["max_populated"].get<uint64_t>(), pod["target"].get<uint64_t>() + 16);
    EXPECT_GT(pod["reclaimed"].get<uint64_t>(), 0u);
    EXPECT_GT(pod["flushes"].get<uint64_t>(), 0u);
    EXPECT_EQ(pod["uffd_errors"], 0);
  }
  EXPECT_GT(r["cross_calls"]["calls"].get<uint64_t>(), 0u);
  EXPECT_GT(r["tlb"]["misses"].get<uint64_t>(), 0u) << "exit handlers translated PoD pages";
  EXPECT_EQ(r["tlb"]["stale_hits"], 0) << "an exit handler used a translation a flush missed";
  for (const auto& vm : r["vms"]) EXPECT_GT(vm["pod"]["fault_stall_ns"].get<uint64_t>(), 0u);
}

}  // namespace

TEST(PodKvm, BootsUnderEveryCallLockModeAndLockStrategy) {
  SKIP_WITHOUT_KVM();
  for (const char* mode : {"global", "percpu"})
    for (const char* lock : {"ticket", "mcs", "clh", "ttas", "pthread", "spin-yield"}) {
      auto c = pod_config(4, 2, "50%");
      c.call_lock = mode;
      c.lock = lock;
      c.fault_threads = 2;  // two initiators: the call lock is really contended
      expect_pod_run_ok(app::run_testbed(c), std::string(mode) + "/" + lock);
    }
}

TEST(PodKvm, StressTinyTargetsManyVcpusBothSchedulers) {
  SKIP_WITHOUT_KVM();
  for (const char* sched : {"host", "credit"})
    for (const char* mode : {"global", "percpu"}) {
      auto c = pod_config(6, 3, "30%");
      c.sched = sched;
      c.pcpus = 2;
      c.lock = "spin-yield";
      c.call_lock = mode;
      c.fault_threads = 3;
      c.sweep_stride = 4;  // more batches, more flushes
      json r = app::run_testbed(c);
      expect_pod_run_ok(r, std::string(sched) + "/" + mode);
      std::printf("%s/%s: %llu flushes, %llu excused (stalled) acks, max flush latency %.0f us\n",
                  sched, mode, (unsigned long long)r["cross_calls"]["calls"].get<uint64_t>(),
                  (unsigned long long)r["cross_calls"]["acks_excused_stalled"].get<uint64_t>(),
                  r["cross_calls"]["latency_ns_max"].get<double>() / 1e3);
    }
}

TEST(PodKvm, TwoMegabyteGranules) {
  SKIP_WITHOUT_KVM();
  auto c = pod_config(2, 2, "50%");
  c.mem = 32ull << 20;
  c.pod_granule = 2ull << 20;
  c.guest_args = {};  // patterns in every granule would leave nothing to reclaim
  json r = app::run_testbed(c);
  for (const auto& vm : r["vms"]) {
    EXPECT_EQ(vm["state"], "exited");
    EXPECT_EQ(vm["pod"]["granule"], 2 << 20);
    EXPECT_GT(vm["pod"]["reclaimed"].get<uint64_t>(), 0u);
  }
}

TEST(PodKvm, OutOfPodMemoryCrashesOnlyThatVm) {
  SKIP_WITHOUT_KVM();
  auto c = pod_config(2, 1, "25%");
  c.guest = "boot-zero,hello";
  c.guest_args = {0, 1};  // boot-zero dirties every page: nothing can be reclaimed
  json r = app::run_testbed(c);
  EXPECT_EQ(r["vms"][0]["state"], "crashed");
  EXPECT_EQ(r["vms"][0]["crash_reason"], "out of PoD memory");
  EXPECT_GT(r["vms"][0]["pod"]["out_of_memory"].get<uint64_t>(), 0u);
  EXPECT_EQ(r["vms"][1]["state"], "exited");
  EXPECT_EQ(r["run"]["end_reason"], "all_exited");
}

// Xen's dirty mask: a pCPU leaves a VM's mask when it switches to another VM's vCPU. Two vCPUs
// per VM on two pCPUs, pinned 1:1 (vCPU k on pCPU k % 2) or not: every VM runs on both pCPUs,
// so a mask that only grows holds both pCPUs at nearly every flush (mean ~2.0, seen before the
// fix); with the pCPUs switching between the VMs most flushes need one.
TEST(PodKvm, FlushMaskIsThePcpusHoldingTheVm) {
  SKIP_WITHOUT_KVM();
  for (const char* pin : {"1:1", "none"}) {
    auto c = pod_config(4, 2, "50%");
    c.sched = "credit";
    c.pcpus = 2;
    c.vcpu_pin = pin;
    c.call_lock = "percpu";
    c.lock = "spin-yield";
    json r = app::run_testbed(c);
    expect_pod_run_ok(r, pin);
    const json& cc = r["cross_calls"];
    std::printf("pin %s: %llu flushes, mask mean %.3f max %llu\n", pin,
                (unsigned long long)cc["flushes"].get<uint64_t>(),
                cc["flush_mask_mean"].get<double>(),
                (unsigned long long)cc["flush_mask_max"].get<uint64_t>());
    EXPECT_LT(cc["flush_mask_mean"].get<double>(), 1.8) << "the mask never shrinks";
    EXPECT_LE(cc["flush_mask_max"].get<uint64_t>(), 2u);
  }
}

// An error while the vCPUs run (a test hook throws from the run loop) unwinds the run: the PoD
// runtime, whose fault threads and p2m attachments point into the executor, must go before the
// executor. Before, the executor went first and the runtime's teardown called into it (ASan:
// heap-use-after-free).
TEST(PodKvm, AnErrorWhileRunningTearsDownPodBeforeTheExecutor) {
  SKIP_WITHOUT_KVM();
  for (const char* sched : {"credit", "host"}) {
    SCOPED_TRACE(sched);
    auto c = pod_config(2, 2, "50%");
    c.sched = sched;
    c.pcpus = 2;
    app::TestHooks hooks;
    hooks.fail_while_running = true;
    EXPECT_THROW(app::run_testbed_with_hooks(c, hooks), std::runtime_error);
  }
}

// Exit handlers reading PoD RAM while it is reclaimed (boot-zero arg2: CONSOLE hypercalls on the
// page just zeroed and on the one zeroed 40 pages before, by then reclaimed): the reads see the
// zeros the guest wrote, the TLBs really translate PoD pages (hits and misses), and no
// translation outlives the flush that invalidated it. The same run with the flushes skipped by
// a test hook must report stale hits: the check above can fail.
TEST(PodKvm, HypercallsReadPodRamUnderReclaimAndASkippedFlushIsCaught) {
  SKIP_WITHOUT_KVM();
  for (const char* sched : {"credit", "host"})
    for (bool skip : {false, true}) {
      auto c = pod_config(4, 2, "50%");
      c.sched = sched;
      c.pcpus = 2;
      c.lock = "spin-yield";
      c.guest_args = {0, 8, 4};
      app::TestHooks hooks;
      hooks.skip_flushes = skip;
      json r = app::run_testbed_with_hooks(c, hooks);
      const std::string what = std::string(sched) + (skip ? " flushes skipped" : "");
      SCOPED_TRACE(what);
      uint64_t consoles = 0;
      for (const auto& vm : r["vms"]) {
        EXPECT_EQ(vm["state"], "exited") << vm["crash_reason"];
        EXPECT_EQ(vm["metrics"]["pattern_errors"], 0);
        const std::string text = vm["console"].get<std::string>();
        EXPECT_EQ(text.find_first_not_of('\0'), std::string::npos) << "read something not zero";
        for (const auto& v : vm["vcpus"]) consoles += v["hypercalls"].value("console", 0ull);
      }
      EXPECT_GT(consoles, 500u);
      EXPECT_GT(r["tlb"]["hits"].get<uint64_t>(), 0u);
      const uint64_t stale = r["tlb"]["stale_hits"].get<uint64_t>();
      std::printf("%s: %llu console hypercalls, tlb hits %llu, stale %llu\n", what.c_str(),
                  (unsigned long long)consoles,
                  (unsigned long long)r["tlb"]["hits"].get<uint64_t>(), (unsigned long long)stale);
      if (skip)
        EXPECT_GT(stale, 0u) << "a missed flush went unnoticed";
      else
        EXPECT_EQ(stale, 0u) << "an exit handler used a translation a flush had invalidated";
    }
}

// Out of PoD memory while exit handlers read PoD RAM (boot-zero dirties every page, and its
// CONSOLE hypercalls read pages it has not touched yet, which the VMM populates on the pCPU
// thread): only that VM crashes, and the run ends instead of hanging in stop() (before the
// VMM-side populate, the pCPU thread slept in a userfaultfd fault nobody would resolve). In a
// child process with a deadline: a hang fails the test. Under --sched host it hung in about 1
// run in 40 until exit handlers held the pages they read (mm::GuestView): a CONSOLE buffer page
// reclaimed between its populate and the read faulted on the vCPU thread while it held the
// console lock, and the other vCPU, waiting for that lock, could not ack the fault thread's flush.
TEST(PodKvm, OutOfPodMemoryDuringAVmmSideAccessCrashesOnlyThatVm) {
  SKIP_WITHOUT_KVM();
  for (const char* sched : {"credit", "host"}) {
    const std::string out = "/tmp/kvmscale-oom-" + std::to_string(getpid()) + ".json";
    auto r = test::spawn({KVMSCALE_BIN,   "run",
                          "--vms",        "2",
                          "--vcpus",      "2",
                          "--mem",        "16M",
                          "--guest",      "boot-zero,hello",
                          "--guest-arg",  "0",
                          "--guest-arg",  "1",
                          "--guest-arg",  "1",
                          "--pod-target", "25%",
                          "--sched",      sched,
                          "--pcpus",      "2",
                          "--lock",       "spin-yield",
                          "--json",       "--force",
                          "--out",        out},
                         0, 90000);
    std::remove(out.c_str());
    SCOPED_TRACE(sched);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["vms"][0]["state"], "crashed");
    EXPECT_EQ(j["vms"][0]["crash_reason"], "out of PoD memory");
    EXPECT_GT(j["vms"][0]["pod"]["vmm_populates"].get<uint64_t>(), 0u)
        << "the exit handlers populated pages themselves";
    EXPECT_EQ(j["vms"][1]["state"], "exited");
    EXPECT_EQ(j["run"]["end_reason"], "all_exited");
  }
}
