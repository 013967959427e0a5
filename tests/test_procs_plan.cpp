// How `run --procs` splits a run over VMM processes (app/procs.hpp): no /dev/kvm needed.
#include <gtest/gtest.h>

#include "app/cli.hpp"
#include "app/config.hpp"
#include "app/procs.hpp"

using namespace kvmscale::app;

namespace {
RunConfig args(std::vector<std::string> a) { return parse_run_args(a); }
}  // namespace

TEST(ProcsPlan, AutoIsOneProcessPer5000VmsOrWhatTheFdLimitHolds) {
  // 20,000 fds hard, 2 fds per 1-vCPU VM: (20000 - 64) / 2 = 9968 VMs per process.
  auto k = [](std::vector<std::string> a, uint64_t nofile) {
    return plan_procs(args(a), nofile).shards.size();
  };
  EXPECT_EQ(k({"--vms", "4000", "--vcpus", "1"}, 20000), 1u);
  EXPECT_EQ(k({"--vms", "5001", "--vcpus", "1"}, 1 << 20), 2u);
  EXPECT_EQ(k({"--vms", "15000", "--vcpus", "1"}, 1 << 20), 3u);
  EXPECT_EQ(k({"--vms", "4000", "--vcpus", "4"}, 20000), 2u);  // 5 fds a VM: 3987 per process
  EXPECT_EQ(k({"--vms", "100", "--vcpus", "1"}, 64), 100u);    // no fds to spare: one VM each
  ProcsPlan p = plan_procs(args({"--vms", "15000", "--vcpus", "1"}), 20000);
  EXPECT_NE(p.rule.find("auto: one process per 5000 VMs (3)"), std::string::npos) << p.rule;
  EXPECT_NE(p.rule.find("holds 9968 VMs of 2 fds"), std::string::npos) << p.rule;
  EXPECT_NE(p.rule.find("-> 3"), std::string::npos) << p.rule;
  // Credit: at most one process per pCPU, and the rule says so.
  p = plan_procs(args({"--vms", "15000", "--vcpus", "1", "--sched", "credit", "--pcpus", "2"}),
                 1 << 20);
  EXPECT_EQ(p.shards.size(), 2u);
  EXPECT_NE(p.rule.find("at most 2 (one pCPU per pool)"), std::string::npos) << p.rule;
}

TEST(ProcsPlan, VmsAndPcpusAreSplitContiguously) {
  ProcsPlan p = plan_procs(
      args({"--vms", "10", "--sched", "credit", "--pcpus", "5", "--procs", "3"}), 1 << 20);
  ASSERT_EQ(p.shards.size(), 3u);
  const uint32_t first_vm[] = {0, 4, 7}, vms[] = {4, 3, 3};
  const uint32_t first_pcpu[] = {0, 2, 4}, pcpus[] = {2, 2, 1};
  for (uint32_t s = 0; s < 3; s++) {
    EXPECT_EQ(p.shards[s].index, s);
    EXPECT_EQ(p.shards[s].count, 3u);
    EXPECT_EQ(p.shards[s].first_vm, first_vm[s]);
    EXPECT_EQ(p.shards[s].vms, vms[s]);
    EXPECT_EQ(p.shards[s].first_pcpu, first_pcpu[s]);
    EXPECT_EQ(p.shards[s].pcpus, pcpus[s]);
  }
  EXPECT_EQ(p.rule, "given: --procs 3");
  // Host mode: VMs only.
  p = plan_procs(args({"--vms", "3", "--procs", "2"}), 1 << 20);
  EXPECT_EQ(p.shards[1].first_vm, 2u);
  EXPECT_EQ(p.shards[1].pcpus, 0u);
}

TEST(ProcsPlan, SettingsThatCrossPoolsAreRefused) {
  const std::vector<std::string> base = {"--vms",  "4",       "--vcpus", "1",       "--sched",
                                         "credit", "--pcpus", "2",       "--procs", "2"};
  auto refused = [&](std::vector<std::string> more) {
    auto a = base;
    a.insert(a.end(), more.begin(), more.end());
    try {
      plan_procs(args(a), 1 << 20);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(refused({"--vcpu-pin", "1"}).find("--vcpu-pin 1 pins vCPU 0 of vm0 to pCPU 1"),
            std::string::npos);
  EXPECT_EQ(refused({"--vcpu-pin", "0,0,1,1"}), "");  // each VM pinned inside its pool
  EXPECT_NE(refused({"--pcpu-bind"}).find("--pcpu-bind"), std::string::npos);
  EXPECT_NE(refused({"--pcpu-bind", "--numa"}).find("--pcpu-bind"), std::string::npos);
  EXPECT_THROW(args({"--vms", "2", "--procs", "3"}), ConfigError);
  EXPECT_THROW(args({"--procs", "0"}), ConfigError);
  EXPECT_THROW(args({"--sched", "rr", "--pcpus", "1", "--vms", "4", "--procs", "2"}), ConfigError);
  EXPECT_NO_THROW(args({"--vms", "4", "--procs", "4"}));  // host mode: no pools to exhaust
}

TEST(ProcsPlan, ShardRoundTripsThroughJson) {
  Shard s;
  s.index = 1;
  s.count = 3;
  s.first_vm = 7;
  s.vms = 3;
  s.first_pcpu = 4;
  s.pcpus = 1;
  Shard t = Shard::from_json(s.to_json());
  EXPECT_EQ(t.to_json(), s.to_json());
  EXPECT_THROW(Shard::from_json({{"index", 3},
                                 {"count", 3},
                                 {"first_vm", 0},
                                 {"vms", 1},
                                 {"first_pcpu", 0},
                                 {"pcpus", 0}}),
               ConfigError);
  EXPECT_THROW(Shard::from_json(nlohmann::json::object()), ConfigError);
}
