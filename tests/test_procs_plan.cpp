// How `run --procs` splits a run over VMM processes (app/procs.hpp): no /dev/kvm needed.
#include <gtest/gtest.h>

#include "app/cli.hpp"
#include "app/config.hpp"
#include "app/procs.hpp"
#include "app/testbed.hpp"

using namespace kvmscale::app;

namespace {
RunConfig args(std::vector<std::string> a) { return parse_run_args(a); }
}  // namespace

TEST(ProcsPlan, AutoIsOneProcessPer5000VmsInHostModeOrWhatTheFdLimitHolds) {
  // 20,000 fds hard, 1 fd per 1-vCPU VM: 20000 - 64 = 19936 VMs per process.
  auto k = [](std::vector<std::string> a, uint64_t nofile) {
    return plan_procs(args(a), nofile).shards.size();
  };
  EXPECT_EQ(k({"--vms", "4000", "--vcpus", "1", "--sched", "host"}, 20000), 1u);
  EXPECT_EQ(k({"--vms", "5001", "--vcpus", "1", "--sched", "host"}, 1 << 20), 2u);
  EXPECT_EQ(k({"--vms", "15000", "--vcpus", "1", "--sched", "host"}, 1 << 20), 3u);
  EXPECT_EQ(k({"--vms", "4000", "--vcpus", "4", "--sched", "host"}, 20000), 1u);  // 4984 fit
  EXPECT_EQ(k({"--vms", "6000", "--vcpus", "4", "--sched", "host"}, 20000), 2u);
  EXPECT_EQ(k({"--vms", "100", "--vcpus", "1", "--sched", "host"}, 64), 100u);  // none to spare
  ProcsPlan p = plan_procs(args({"--vms", "15000", "--vcpus", "1", "--sched", "host"}), 20000);
  EXPECT_NE(p.rule.find("one process per 5000 VMs (3)"), std::string::npos) << p.rule;
  EXPECT_NE(p.rule.find("holds 19936 VMs of 1 fd(s)"), std::string::npos) << p.rule;
  EXPECT_NE(p.rule.find("-> 3"), std::string::npos) << p.rule;
  // Credit: processes are cpupools, so auto splits only to fit the fds, at most one per pCPU.
  p = plan_procs(args({"--vms", "15000", "--vcpus", "1", "--sched", "credit", "--pcpus", "2"}),
                 20000);
  EXPECT_EQ(p.shards.size(), 1u);
  EXPECT_NE(p.rule.find("split only to fit"), std::string::npos) << p.rule;
  p = plan_procs(args({"--vms", "9000", "--vcpus", "4", "--sched", "credit", "--pcpus", "2"}),
                 20000);
  EXPECT_EQ(p.shards.size(), 2u);  // 4,984 4-vCPU VMs fit a process
  EXPECT_NE(p.rule.find("-> 2"), std::string::npos) << p.rule;
  // Two pools of 7,500 4-vCPU VMs need 30,000 fds each: refused before any process starts.
  try {
    plan_procs(args({"--vms", "15000", "--vcpus", "4", "--sched", "credit", "--pcpus", "2"}),
               20000);
    FAIL() << "a plan whose processes cannot hold their VMs' fds was accepted";
  } catch (const RunError& e) {
    EXPECT_NE(std::string(e.what()).find("at most one process per pCPU"), std::string::npos)
        << e.what();
  }
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
  EXPECT_EQ(refused({"--pcpu-bind"}), "");            // each pool binds to its own host CPUs
  EXPECT_EQ(refused({"--pcpu-bind", "--numa"}), "");
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

namespace {
// A child's record with only what merging reads.
nlohmann::json child_record(uint32_t first_vm, uint32_t vms, uint64_t boot_base) {
  using nlohmann::json;
  json list = json::array();
  for (uint32_t i = 0; i < vms; i++)
    list.push_back({{"index", first_vm + i},
                    {"guest", "idle"},
                    {"state", "running"},
                    {"boot_ns", boot_base + i}});
  return {{"host", {{"backend", "PVM"}, {"online_cpus", 2}}},
          {"run",
           {{"exec_ns", 100 + first_vm},
            {"end_reason", "duration"},
            {"interrupted", false},
            {"warnings", {"w-common", "w" + std::to_string(first_vm)}},
            {"phases",
             {{"create_ns", 10 + first_vm},
              {"teardown_ns", 50 - first_vm},
              {"boot_ns", first_vm == 0 ? json(5) : json()}}},
            {"resources",
             {{"peak_rss_bytes", 1000},
              {"threads_peak", 3},
              {"mem_available_before", 5000 - first_vm},
              {"mem_available_min_running", 3000 - first_vm},
              {"mem_used_peak", 1},
              {"mem_available_after", 4000 - first_vm}}}}},
          {"summary",
           {{"vms", vms}, {"exits_total", 7}, {"create_ns_total", 20}, {"create_wall_ns", 9}}},
          {"locks",
           {{"policy", "ticket"},
            {"profiling", true},
            {"classes", {{"pod", {{"acquisitions", 2}, {"wait_max_ns", 5 + first_vm}}}}},
            {"locks", {{{"name", "pod[vm" + std::to_string(first_vm) + "]"}}}}}},
          {"sched", {{"double_runs", 0}}},
          {"tlb",
           {{"entries_per_context", 64},
            {"hits", 1},
            {"misses", 2},
            {"stale_hits", 0},
            {"flushes_received", {first_vm, first_vm}}}},
          {"cross_calls",
           {{"mode", "global"},
            {"calls", 2},
            {"targets", first_vm ? 6 : 2},
            {"targets_mean", 0.0},
            {"flushes", 4},
            {"flush_mask_mean", first_vm ? 2.0 : 1.0},
            {"latency_hist_log2_ns", first_vm ? json({1, 2, 5}) : json({1, 2})},
            {"initiators", {{{"context", 0}, {"calls", 2}}, {{"context", nullptr}, {"calls", 1}}}},
            {"latency_ns_max", 10 + first_vm}}},
          {"vms", list}};
}
}  // namespace

TEST(ProcsMerge, OneRecordReadsLikeAnUnshardedRun) {
  using nlohmann::json;
  RunConfig cfg = args({"--vms", "5", "--vcpus", "1", "--procs", "2", "--guest", "idle"});
  ProcsPlan plan = plan_procs(cfg, 1 << 20);
  std::vector<ShardResult> rs;
  for (const Shard& s : plan.shards)
    rs.push_back({s, pid_t(100 + s.index), 0, 1000, 3000 + s.index,
                  child_record(s.first_vm, s.vms, 10 * s.index)});
  json m = merge_shard_records(cfg, plan, rs, 42, 777, false);
  ASSERT_EQ(m["vms"].size(), 5u);
  for (uint32_t i = 0; i < 5; i++) EXPECT_EQ(m["vms"][i]["index"], i);
  EXPECT_EQ(m["summary"]["vms"], 5);
  EXPECT_EQ(m["summary"]["vms_booted"], 5);
  EXPECT_EQ(m["summary"]["exits_total"], 14);
  EXPECT_EQ(m["summary"]["boot_ns"]["max"], 11);
  EXPECT_EQ(m["run"]["wall_ns"], 777);
  EXPECT_EQ(m["run"]["exec_ns"], 103);
  EXPECT_EQ(m["run"]["end_reason"], "duration");
  EXPECT_EQ(m["run"]["warnings"], json({"w-common", "w0", "w3"}));
  EXPECT_EQ(m["run"]["procs"]["count"], 2);
  // Phases: the slowest process's, boot null when a process's VMs did not all boot;
  // resources: summed, MemAvailable before highest and later lowest, memory used their drop.
  EXPECT_EQ(m["run"]["phases"]["create_ns"], 13);
  EXPECT_EQ(m["run"]["phases"]["teardown_ns"], 50);
  EXPECT_TRUE(m["run"]["phases"]["boot_ns"].is_null());
  EXPECT_EQ(m["run"]["resources"]["peak_rss_bytes"], 2000);
  EXPECT_EQ(m["run"]["resources"]["threads_peak"], 6);
  EXPECT_EQ(m["run"]["resources"]["mem_available_before"], 5000);
  EXPECT_EQ(m["run"]["resources"]["mem_available_min_running"], 2997);
  EXPECT_EQ(m["run"]["resources"]["mem_used_peak"], 2003);
  EXPECT_EQ(m["run"]["resources"]["mem_available_after"], 3997);
  EXPECT_EQ(m["locks"]["classes"]["pod"]["acquisitions"], 4);
  EXPECT_EQ(m["locks"]["classes"]["pod"]["wait_max_ns"], 8);
  EXPECT_EQ(m["locks"]["locks"][1]["name"], "proc1:pod[vm3]");
  EXPECT_EQ(m["tlb"]["flushes_received"], json({0, 0, 3, 3}));
  EXPECT_EQ(m["tlb"]["misses"], 4);
  EXPECT_EQ(m["cross_calls"]["calls"], 4);
  EXPECT_EQ(m["cross_calls"]["targets_mean"], 2.0);     // (2 + 6) / 4
  EXPECT_EQ(m["cross_calls"]["flush_mask_mean"], 1.5);  // (4 * 1 + 4 * 2) / 8
  // Histograms of different lengths (each ends at its last non-empty bucket) add bucket by
  // bucket; initiating contexts are numbered run-wide (host mode: vCPU 3 is process 1's first).
  EXPECT_EQ(m["cross_calls"]["latency_hist_log2_ns"], json({2, 4, 5}));
  ASSERT_EQ(m["cross_calls"]["initiators"].size(), 4u);
  EXPECT_EQ(m["cross_calls"]["initiators"][0]["context"], 0);
  EXPECT_TRUE(m["cross_calls"]["initiators"][1]["context"].is_null());
  EXPECT_EQ(m["cross_calls"]["initiators"][2]["context"], 3);
  EXPECT_EQ(m["cross_calls"]["latency_ns_max"], 13);
  EXPECT_EQ(m["cross_calls"]["mode"], "global");
  ASSERT_EQ(m["procs"].size(), 2u);
  EXPECT_EQ(m["procs"][1]["vms"], json({3, 2}));
  EXPECT_EQ(m["procs"][1]["pid"], 101);
  EXPECT_EQ(m["procs"][1]["wall_ns"], 2001);
  EXPECT_EQ(m["procs"][1]["run"]["phases"]["create_ns"], 13);
  // One process interrupted: the run is.
  rs[1].record["run"]["interrupted"] = true;
  EXPECT_EQ(merge_shard_records(cfg, plan, rs, 42, 777, false)["run"]["end_reason"], "interrupted");
}
