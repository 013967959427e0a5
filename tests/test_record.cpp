#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "app/record.hpp"

using namespace kvmscale::vmm;
namespace fs = std::filesystem;

namespace {
fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("kvmscale-test-" + std::to_string(getpid()));
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST(Record, EmptyRunHasEveryTopLevelField) {
  RunConfig cfg;
  HostInfo host = probe_host(nullptr);
  RunTiming t{1, 10, 20, 30};
  auto r = make_run_record(cfg, host, {}, t, EndReason::Interrupted, {"w1"});
  EXPECT_EQ(r["schema_version"], kRecordSchemaVersion);
  for (const char* k : {"tool", "config", "host", "run", "summary", "vms"})
    EXPECT_TRUE(r.contains(k)) << k;
  EXPECT_EQ(r["run"]["end_reason"], "interrupted");
  EXPECT_TRUE(r["run"]["interrupted"].get<bool>());
  EXPECT_EQ(r["run"]["wall_ns"], 20);
  EXPECT_EQ(r["run"]["exec_ns"], 10);
  EXPECT_EQ(RunConfig::from_json(r["config"]).to_json(), cfg.to_json()) << "re-runnable";
  EXPECT_GT(r["host"]["online_cpus"].get<int>(), 0);
  EXPECT_NE(summary_table(r).find("warning: w1"), std::string::npos);
}

TEST(Record, AtomicWriteReplacesWholeFile) {
  fs::path d = temp_dir();
  std::string p = (d / "r.json").string();
  write_file_atomically(p, "first");
  write_file_atomically(p, "second version");
  std::ifstream f(p);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "second version");
  size_t files = 0;
  for (auto& e : fs::directory_iterator(d)) files += e.is_regular_file();
  EXPECT_EQ(files, 1u) << "no temp file left behind";
  fs::remove_all(d);
}

TEST(Record, AtomicWriteFailsCleanly) {
  EXPECT_THROW(write_file_atomically("/nonexistent-dir/x.json", "x"), std::system_error);
}

TEST(Record, PathFromOut) {
  EXPECT_EQ(record_path("a/b.json", 0), "a/b.json");
  std::string p = record_path("results", 1700000000ull * 1000000000ull);
  EXPECT_EQ(p.rfind("results/run-20231114-221320-", 0), 0u) << p;
  EXPECT_EQ(p.substr(p.size() - 5), ".json");
}

TEST(Record, ConsoleBytesThatAreNotUtf8SurviveExactly) {
  const std::string bytes = std::string("ok\xff\n", 4);
  nlohmann::json f = console_fields(bytes);
  EXPECT_EQ(f["console"], "ok\xEF\xBF\xBD\n") << "the invalid byte shows as U+FFFD";
  EXPECT_EQ(f["console_base64"], "b2v/Cg==") << "base64 of 6f 6b ff 0a";
  EXPECT_NO_THROW((void)f.dump());
  nlohmann::json valid = console_fields("héllo\n");
  EXPECT_EQ(valid["console"], "héllo\n");
  EXPECT_TRUE(valid["console_base64"].is_null());
}
