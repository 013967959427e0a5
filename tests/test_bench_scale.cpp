// bench/bench_scale: its quick run measures every mode and the notifier section, and reports
// positive figures in its JSON; bad input is refused before anything runs.
#include <sys/resource.h>
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
  for (const json& row : notifier)
    for (const auto& [field, ratio] : {std::pair{"madvise_dontneed_ns", "madvise_dontneed"},
                                       {"munmap_ns", "munmap"},
                                       {"mprotect_ns", "mprotect"}}) {
      EXPECT_TRUE(positive_number(row[field])) << row.dump();
      EXPECT_TRUE(positive_number(row["vs_no_vms"][ratio])) << row.dump();
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

}  // namespace
}  // namespace kvmscale::test
