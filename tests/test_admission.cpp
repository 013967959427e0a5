// Admission (app/admission.hpp): what a run needs from the host, counted as what its guests
// touch rather than --mem per VM.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include "app/admission.hpp"
#include "app/config.hpp"

using namespace kvmscale::app;

namespace {

// A host like the development machine: 2 CPUs, 24 GiB, a 20,000-fd hard limit.
HostInfo host_like_this_one() {
  HostInfo h;
  h.online_cpus = 2;
  h.mem_total = 24ull << 30;
  h.mem_available = 23ull << 30;
  h.nofile_soft = h.nofile_hard = 20000;
  h.nproc_soft = RLIM_INFINITY;
  h.threads_max = 190000;
  h.max_map_count = 65530;
  return h;
}

RunConfig idle_vms(uint32_t n, const std::string& sched = "credit") {
  RunConfig c;
  c.guest = "idle";
  c.vms = n;
  c.vcpus = 1;
  c.mem = 6ull << 20;
  c.sched = sched;
  c.pcpus = 2;
  return c;
}

bool mentions(const std::vector<std::string>& lines, const std::string& what) {
  for (const auto& l : lines)
    if (l.find(what) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(Admission, GuestRamIsReservedNotCountedAsUsed) {
  // 10,000 x 6M = 60G of guest RAM on a 24G host: idle guests touch only their boot area. The
  // admission before issue 13 refused this ("guest memory ... exceeds host memory").
  HostInfo h = host_like_this_one();
  LimitCheck c = check_limits(h, idle_vms(10000), {4096});
  EXPECT_TRUE(c.errors.empty()) << c.errors.front();
  EXPECT_LT(c.memory_needed, 8ull << 30);
  EXPECT_GT(c.memory_needed, 10000ull * (64 << 10));  // boot area and kernel share are counted
  EXPECT_TRUE(mentions(c.assumptions, "idle: boot area only"));
}

TEST(Admission, GuestsThatTouchTheirRamAreCountedAndTheAssumptionSaid) {
  HostInfo h = host_like_this_one();
  RunConfig c = idle_vms(100);
  c.guest = "boot-zero";
  c.mem = 1ull << 30;  // 100 x ~1G zeroed: more than the host has
  LimitCheck full = check_limits(h, c, {8192});
  ASSERT_FALSE(full.errors.empty());
  EXPECT_NE(full.errors[0].find("touched by guests"), std::string::npos) << full.errors[0];
  EXPECT_TRUE(mentions(full.assumptions, "boot-zero: touches all free RAM"));

  c.pod_target = "10%";  // populate-on-demand caps what each guest can hold
  LimitCheck pod = check_limits(h, c, {8192});
  EXPECT_TRUE(pod.errors.empty());
  EXPECT_TRUE(mentions(pod.assumptions, "up to the PoD target"));

  RunConfig f = idle_vms(10);
  f.guest = "";
  f.guest_file = "/tmp/my-guest.bin";
  LimitCheck file = check_limits(h, f, {8192});
  EXPECT_TRUE(mentions(file.assumptions, "unknown guest, assumed to touch all free RAM"))
      << file.assumptions.front();
}

TEST(Admission, TheFdLimitStatesHowManyVmsFit) {
  // One fd per vCPU once set up: ~19,900 1-vCPU VMs fit a 20,000-fd limit (2 fds per VM before).
  HostInfo h = host_like_this_one();
  EXPECT_TRUE(check_limits(h, idle_vms(19900), {4096}).errors.empty());
  LimitCheck over = check_limits(h, idle_vms(19990), {4096});
  ASSERT_FALSE(over.errors.empty());
  EXPECT_NE(over.errors[0].find("at most 19936 such VMs per process"), std::string::npos)
      << over.errors[0];
  EXPECT_NE(over.errors[0].find("--procs"), std::string::npos);
}

TEST(Admission, KvmWorkerThreadsCountAgainstThreadsMax) {
  HostInfo h = host_like_this_one();
  h.threads_max = 15000;  // 10,000 vCPU threads fit, plus 10,000 KVM workers do not
  LimitCheck c = check_limits(h, idle_vms(10000, "host"), {4096});
  ASSERT_FALSE(c.errors.empty());
  EXPECT_NE(c.errors[0].find("one KVM worker per VM"), std::string::npos) << c.errors[0];
  EXPECT_TRUE(check_limits(h, idle_vms(7000, "credit"), {4096}).errors.empty());
}

TEST(Admission, MemGoesDownToTheLayoutsMinimum) {
  RunConfig c = idle_vms(1);
  c.mem = 6ull << 20;  // the 4M boot area and one 2M page of free RAM
  EXPECT_NO_THROW(c.validate());
  c.mem = 4ull << 20;
  try {
    c.validate();
    FAIL() << "--mem 4M accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("between 6M"), std::string::npos) << e.what();
  }
}

TEST(Admission, AProcessReservesAtMost64TOfGuestMemoryAndSaysUseProcs) {
  HostInfo h = host_like_this_one();
  h.mem_total = h.mem_available = 1ull << 50;  // memory is not what stops this run
  RunConfig c = idle_vms(40000);
  c.mem = 4ull << 30;  // 160T of address space in one process, more than x86-64 gives it
  LimitCheck l = check_limits(h, c, {4096});
  ASSERT_FALSE(l.errors.empty());
  EXPECT_TRUE(mentions(l.errors, "of address space in one process")) << l.errors[0];
  EXPECT_TRUE(mentions(l.errors, "use --procs"));
}

TEST(Admission, PodFaultServiceFdsAndKernelTasksAreCounted) {
  HostInfo h = host_like_this_one();
  RunConfig pod = idle_vms(19900);
  pod.pod_target = "50%";
  pod.fault_threads = 64;  // an io_uring each, plus the userfaultfd and an eventfd
  EXPECT_TRUE(mentions(check_limits(h, pod, {4096}).errors, "open files"));
  pod.pod_target.clear();
  EXPECT_FALSE(mentions(check_limits(h, pod, {4096}).errors, "open files"));

  h.nproc_soft = 15000;  // 10,000 vCPU threads fit; with KVM's workers they do not
  h.pid_max = 32768;
  LimitCheck host_mode = check_limits(h, idle_vms(10000, "host"), {4096});
  EXPECT_TRUE(mentions(host_mode.errors, "RLIMIT_NPROC"));
  EXPECT_TRUE(mentions(host_mode.warnings, "kernel.pid_max"));
}

// The default (--fault-threads 0) counts the fault threads the run starts: one per pCPU, at most
// PodRuntime::kMaxDefaultFaultThreads, so 4096 pCPUs need the fds of 1024 threads.
TEST(Admission, PodFdsCountTheDefaultFaultThreadsTheRunStarts) {
  HostInfo h = host_like_this_one();
  RunConfig dflt = idle_vms(19900);
  dflt.pod_target = "50%";
  dflt.pcpus = 4096;
  RunConfig capped = dflt;
  capped.fault_threads = 1024;
  const auto errors = check_limits(h, dflt, {4096}).errors;
  ASSERT_TRUE(mentions(errors, "open files"));
  EXPECT_EQ(errors, check_limits(h, capped, {4096}).errors);
}

TEST(Admission, AProcessOfAShardedRunChecksOnlyItsOwnFdsAndMappings) {
  HostInfo h = host_like_this_one();
  RunConfig c = idle_vms(30000, "host");  // 30,000 vCPU threads: over the user's limit
  h.nproc_soft = 20000;
  EXPECT_TRUE(mentions(check_limits(h, c, {4096}).errors, "RLIMIT_NPROC"));
  c.shard.vms = 15000;  // the parent checked the host for the whole run
  c.shard.count = 2;
  LimitCheck l = check_limits(h, c, {4096});
  EXPECT_TRUE(l.errors.empty()) << l.errors.front();
  EXPECT_TRUE(l.assumptions.empty());
  c.shard.vms = 19990;  // but its own fds are its own
  EXPECT_TRUE(mentions(check_limits(h, c, {4096}).errors, "open files"));
}
