// bench/bench_scale: its quick run measures every mode and the notifier section, and reports
// positive figures in its JSON; bad input is refused before anything runs.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kvm_helpers.hpp"

namespace kvmscale::test {
namespace {

using nlohmann::json;

bool positive_number(const json& j) { return j.is_number() && j.get<double>() > 0; }

TEST(BenchScale, QuickRunReportsEveryFigureOfEveryMode) {
  SKIP_WITHOUT_KVM();
  const std::string out = testing::TempDir() + "bench_scale_" + std::to_string(getpid()) + ".json";
  Spawned r = spawn({KVMSCALE_BENCH_SCALE_BIN, "--quick", "--json", out}, 0, 120000);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::ifstream f(out);
  json j = json::parse(f, nullptr, false);
  ::unlink(out.c_str());
  ASSERT_TRUE(j.is_object()) << "bench_scale --json wrote no JSON";

  ASSERT_EQ(j["sizes"].size(), 2u) << "--quick measures N = 20 and 100";
  for (const json& size : j["sizes"]) {
    for (const char* mode : {"host", "credit", "bare"}) {
      const json& c = size["cells"][mode];
      SCOPED_TRACE(std::string(mode) + ", N = " + size["vms"].dump());
      ASSERT_TRUE(c.value("ok", false)) << c.dump();
      for (const char* field : {"launch_ns", "teardown_ns", "cpu_ns"})
        EXPECT_TRUE(positive_number(c["per_vm"][field])) << field << ": " << c.dump();
      EXPECT_TRUE(c["launch_source"].is_string() && c["teardown_source"].is_string());
    }
    for (const char* mode : {"host", "credit"})
      for (const char* field : {"launch", "teardown", "cpu"})
        EXPECT_TRUE(positive_number(size["per_vm_vs_bare"][mode][field]))
            << mode << " / bare, " << field;
    for (const char* mode : {"host", "credit", "bare"})
      EXPECT_TRUE(positive_number(size["launch_per_vm_vs_smallest_n"][mode])) << mode;
  }

  const json& notifier = j["notifier"];
  ASSERT_EQ(notifier.size(), 3u) << "--quick holds M = 0, 20, 100 VMs";
  for (const json& row : notifier) {
    for (const auto& [field, ratio] : {std::pair{"madvise_dontneed_ns", "madvise_dontneed"},
                                       {"munmap_ns", "munmap"},
                                       {"mprotect_ns", "mprotect"}}) {
      EXPECT_TRUE(positive_number(row[field])) << row.dump();
      EXPECT_TRUE(positive_number(row["vs_no_vms"][ratio])) << row.dump();
    }
    // null where the kernel (or its vm.unprivileged_userfaultfd) gives no userfaultfd WP
    if (!row["uffd_writeprotect_ns"].is_null()) {
      EXPECT_TRUE(positive_number(row["uffd_writeprotect_ns"]) &&
                  positive_number(row["vs_no_vms"]["uffd_writeprotect"]))
          << row.dump();
    }
  }
}

TEST(BenchScale, BadInputIsRefusedBeforeAnythingRuns) {
  struct Case {
    std::vector<std::string> args;
    const char* says;
  } cases[] = {
      {{"--n", "0"}, "--n: each count must be 1..1000000"},
      {{"--modes", "host,xen"}, "'xen' is not one of host, credit, bare"},
      {{"--mem", "lots"}, "--mem/--duration"},
      {{"--kvmscale", "/nonexistent/kvmscale"}, "not an executable file"},
  };
  std::vector<Case> all(std::begin(cases), std::end(cases));
  // One fd per bare VM: a count at the hard limit cannot fit (where the limit is in range).
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  const std::string at_limit = std::to_string(rl.rlim_max);
  if (rl.rlim_max <= 1000000)
    all.push_back({{"--modes", "bare", "--n", at_limit}, "RLIMIT_NOFILE"});
  for (const Case& c : all) {
    std::vector<std::string> argv = {KVMSCALE_BENCH_SCALE_BIN};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    Spawned r = spawn(argv, 0, 30000);
    EXPECT_EQ(r.exit_code, 2) << c.says << "\n" << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << "nothing measured: " << r.out;
  }
}

// A stand-in for kvmscale: a script printing `record` (a JSON text; NOW is replaced by the
// wall clock at its start) and exiting with `exit_code`, and what bench_scale made of it.
json bench_on_fake_record(const std::string& record, int exit_code, Spawned* run = nullptr) {
  const std::string dir = testing::TempDir();
  const std::string tag = std::to_string(getpid());
  const std::string script = dir + "fake_kvmscale_" + tag,
                    out = dir + "fake_bench_" + tag + ".json";
  {
    std::ofstream f(script);
    f << "#!/bin/sh\nnow=$(date +%s%N)\ncat <<EOF | sed \"s/NOW/$now/\"\n"
      << record << "\nEOF\n"
      << (exit_code ? "echo 'kvmscale: this host cannot hold the run' >&2\n" : "") << "exit "
      << exit_code << "\n";
  }
  ::chmod(script.c_str(), 0755);
  Spawned r = spawn({KVMSCALE_BENCH_SCALE_BIN, "--modes", "host", "--n", "20", "--kvmscale", script,
                     "--json", out},
                    0, 30000);
  if (run) *run = r;
  std::ifstream f(out);
  json j = json::parse(f, nullptr, false);
  ::unlink(script.c_str());
  ::unlink(out.c_str());
  return j.is_object() ? j["sizes"][0]["cells"]["host"] : json();
}

TEST(BenchScale, UsesTheRecordsPhasesWhenItHasThem) {
  SKIP_WITHOUT_KVM();
  json c = bench_on_fake_record(R"({"run": {"started_unix_ns": NOW, "wall_ns": 1500000000,
      "end_reason": "duration", "phases": {"create_ns": 2000000, "boot_ns": 1000000,
      "run_ns": 1000000000, "teardown_ns": 500000}, "resources": {"peak_rss_bytes": 123}},
      "summary": {"vms_booted": 20, "create_wall_ns": 7, "boot_ns": {"max": 7}}})",
                                0);
  ASSERT_TRUE(c.value("ok", false)) << c.dump();
  EXPECT_EQ(c["launch_ns"], 3000000u) << "create_ns + boot_ns of run.phases";
  EXPECT_EQ(c["teardown_ns"], 500000u) << "run.phases.teardown_ns";
  EXPECT_EQ(c["launch_source"], "record: run.phases.create_ns + boot_ns");
  EXPECT_EQ(c["details"]["resources"]["peak_rss_bytes"], 123) << "run.resources is kept";
}

TEST(BenchScale, FallsBackToTheRecordsTimingsWithoutPhases) {
  SKIP_WITHOUT_KVM();
  json c = bench_on_fake_record(R"({"run": {"started_unix_ns": NOW, "wall_ns": 1000,
      "end_reason": "duration"}, "summary": {"vms_booted": 20, "create_wall_ns": 4000000,
      "boot_ns": {"max": 6000000}}})",
                                0);
  ASSERT_TRUE(c.value("ok", false)) << c.dump();
  EXPECT_EQ(c["launch_ns"], 10000000u) << "summary.create_wall_ns + summary.boot_ns.max";
  EXPECT_GT(c["teardown_ns"].get<uint64_t>(), 0u) << "child exit - end of run";
  EXPECT_NE(c["teardown_source"].get<std::string>().find("estimate"), std::string::npos)
      << "a teardown not in the record is labelled an estimate";
}

TEST(BenchScale, AFailedOrPartialRunIsReportedNotMeasured) {
  SKIP_WITHOUT_KVM();
  Spawned r;
  json refused = bench_on_fake_record("{}", 1, &r);
  EXPECT_EQ(r.exit_code, 1) << "a failed cell fails the bench";
  EXPECT_FALSE(refused.value("ok", true));
  EXPECT_EQ(refused["error"], "exit 1: kvmscale: this host cannot hold the run") << refused.dump();
  EXPECT_NE(r.out.find("host    failed: exit 1"), std::string::npos) << r.out;

  json partial = bench_on_fake_record(R"({"run": {"started_unix_ns": NOW, "wall_ns": 1,
      "end_reason": "duration"}, "summary": {"vms_booted": 5, "create_wall_ns": 1,
      "boot_ns": {"max": 1}}})",
                                      0);
  EXPECT_FALSE(partial.value("ok", true));
  EXPECT_NE(partial["error"].get<std::string>().find("only 5 of 20 VMs booted"), std::string::npos)
      << partial.dump();
  EXPECT_NE(partial["error"].get<std::string>().find("--duration"), std::string::npos)
      << "says what to change: " << partial.dump();
}

}  // namespace
}  // namespace kvmscale::test
