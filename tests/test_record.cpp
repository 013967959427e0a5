#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "app/record.hpp"

using namespace kvmscale::app;
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

TEST(Record, AtomicWriteWithoutReplaceKeepsAnExistingFile) {
  fs::path d = temp_dir();
  std::string p = (d / "r.json").string();
  write_file_atomically(p, "first", false);  // nothing there: written
  try {
    write_file_atomically(p, "second", false);
    ADD_FAILURE() << "an existing file was replaced";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), std::errc::file_exists) << e.what();
  }
  std::ifstream f(p);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "first");
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

// ---- host facts (docs/run-record.md "host"), read from a fake /proc and /sys tree ----------

namespace {
void put(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}
}  // namespace

TEST(HostFacts, CpulistCount) {
  EXPECT_EQ(cpulist_count(""), 0);
  EXPECT_EQ(cpulist_count("0"), 1);
  EXPECT_EQ(cpulist_count("0-3"), 4);
  EXPECT_EQ(cpulist_count("0,4"), 2);
  EXPECT_EQ(cpulist_count("0-3,8-11,16"), 9);
  EXPECT_EQ(cpulist_count("0-1023"), 1024);
  for (const char* bad : {"x", "3-1", "0-", "0-2x", "1,,2", "-1", "1,", ",1", "0-4294967296", " 1"})
    EXPECT_EQ(cpulist_count(bad), -1) << bad;
}

TEST(HostFacts, ReadFromAFakeRoot) {
  fs::path root = temp_dir() / "root";
  fs::remove_all(root);
  put(root / "proc/cpuinfo",
      "processor\t: 0\nmodel name\t: Fake CPU @ 3.0GHz\nmicrocode\t: 0xde\n\n"
      "processor\t: 1\nmodel name\t: Fake CPU @ 3.0GHz\nmicrocode\t: 0xde\n");
  const fs::path cpu = root / "sys/devices/system/cpu";
  put(cpu / "smt/active", "1\n");
  put(cpu / "smt/control", "on\n");
  for (int c = 0; c < 4; c++)
    put(cpu / ("cpu" + std::to_string(c)) / "topology/thread_siblings_list",
        c % 2 ? "1,3\n" : "0,2\n");
  fs::create_directories(cpu / "cpufreq");  // not a cpuN directory
  const fs::path node = root / "sys/devices/system/node";
  put(node / "node0/cpulist", "0-1\n");
  put(node / "node0/meminfo", "Node 0 MemFree: 1 kB\nNode 0 MemTotal:       1024 kB\n");
  put(node / "node10/cpulist", "2-3\n");
  put(node / "node10/meminfo", "Node 10 MemTotal:       2048 kB\n");
  put(node / "node2/cpulist", "\n");  // a memory-only node
  put(node / "node2/meminfo", "Node 2 MemTotal:       4 kB\n");
  put(node / "possible", "0-10\n");
  put(root / "sys/module/kvm/parameters/halt_poll_ns", "200000\n");
  put(root / "sys/module/kvm/parameters/nx_huge_pages", "N\n");
  put(root / "sys/module/kvm_intel/parameters/ept", "Y\n");
  put(root / "sys/module/kvm_intel/parameters/enable_apicv", "Y\n");
  put(root / "sys/module/vhost/parameters/max_mem_regions", "64\n");  // not a kvm module
  fs::create_directories(root / "sys/module/kvm_amd");                // no parameters dir
  // A parameter directory entry that cannot be read as a file.
  fs::create_directories(root / "sys/module/kvm/parameters/not_a_file");

  HostInfo h;
  read_host_files(h, root.string());
  EXPECT_EQ(h.cpu_model, "Fake CPU @ 3.0GHz");
  EXPECT_EQ(h.microcode, "0xde");
  EXPECT_EQ(h.smt_active, 1);
  EXPECT_EQ(h.smt_control, "on");
  EXPECT_EQ(h.threads_per_core, 2);
  ASSERT_EQ(h.numa.size(), 3u);
  EXPECT_EQ(h.numa[0].node, 0);
  EXPECT_EQ(h.numa[0].cpus, "0-1");
  EXPECT_EQ(h.numa[0].mem_total, 1024u << 10);
  EXPECT_EQ(h.numa[1].node, 2) << "ordered by number, not by name";
  EXPECT_EQ(h.numa[1].cpus, "");
  EXPECT_EQ(h.numa[2].node, 10);
  EXPECT_EQ(h.numa[2].mem_total, 2048u << 10);
  EXPECT_EQ(h.kvm_params["kvm"]["halt_poll_ns"], "200000");
  EXPECT_EQ(h.kvm_params["kvm"]["nx_huge_pages"], "N");
  EXPECT_EQ(h.kvm_params["kvm"].count("not_a_file"), 0u);
  EXPECT_EQ(h.kvm_params["kvm_intel"]["ept"], "Y");
  EXPECT_EQ(h.kvm_params["kvm_intel"]["enable_apicv"], "Y");
  EXPECT_EQ(h.kvm_params.count("vhost"), 0u);

  auto j = h.to_json();
  EXPECT_EQ(j["microcode"], "0xde");
  EXPECT_EQ(j["smt"]["active"], true);
  EXPECT_EQ(j["smt"]["threads_per_core"], 2);
  EXPECT_EQ(j["numa"][2]["node"], 10);
  EXPECT_EQ(j["numa"][2]["cpus"], "2-3");
  EXPECT_EQ(j["kvm_params"]["kvm"]["halt_poll_ns"], "200000");
  fs::remove_all(root);
}

TEST(HostFacts, AnEmptyRootLeavesEveryFactUnknown) {
  fs::path root = temp_dir() / "empty-root";
  fs::remove_all(root);
  fs::create_directories(root);
  HostInfo h;
  read_host_files(h, root.string());
  auto j = h.to_json();
  EXPECT_EQ(j["cpu_model"], "unknown");
  EXPECT_TRUE(j["microcode"].is_null());
  EXPECT_TRUE(j["smt"]["active"].is_null());
  EXPECT_TRUE(j["smt"]["control"].is_null());
  EXPECT_TRUE(j["smt"]["threads_per_core"].is_null());
  EXPECT_EQ(j["numa"], nlohmann::json::array());
  EXPECT_EQ(j["kvm_params"], nlohmann::json::object());
  fs::remove_all(root);
}

TEST(HostFacts, SmtOffAndGarbageValues) {
  fs::path root = temp_dir() / "smt-root";
  fs::remove_all(root);
  const fs::path cpu = root / "sys/devices/system/cpu";
  put(cpu / "smt/active", "0\n");
  put(cpu / "smt/control", "forceoff\n");
  put(cpu / "cpu0/topology/thread_siblings_list", "0\n");
  put(cpu / "cpu1/topology/thread_siblings_list", "garbage\n");
  put(root / "proc/cpuinfo", "model name: Bare\nmicrocode_x: 1\n");
  HostInfo h;
  read_host_files(h, root.string());
  EXPECT_EQ(h.smt_active, 0);
  EXPECT_EQ(h.smt_control, "forceoff");
  EXPECT_EQ(h.threads_per_core, 1) << "a malformed list is not a count";
  EXPECT_EQ(h.cpu_model, "Bare");
  EXPECT_EQ(h.microcode, "") << "microcode_x is another field";
  EXPECT_EQ(h.to_json()["smt"]["active"], false);
  put(cpu / "smt/active", "2\n");
  read_host_files(h, root.string());
  EXPECT_EQ(h.smt_active, -1) << "neither 0 nor 1";
  fs::remove_all(root);
}

TEST(HostFacts, CommandLineKeepsEveryArgumentAndSurvivesBadBytes) {
  fs::path root = temp_dir() / "cmd-root";
  fs::remove_all(root);
  static const char kCmdline[] = "kvmscale\0run\0--guest\0\0a b\0\xff";
  put(root / "proc/self/cmdline", std::string(kCmdline, sizeof kCmdline - 1));
  auto args = command_line(root.string());
  ASSERT_EQ(args.size(), 6u);
  EXPECT_EQ(args[0], "kvmscale");
  EXPECT_EQ(args[3], "") << "an empty argument is kept";
  EXPECT_EQ(args[4], "a b");
  EXPECT_EQ(args[5], "\xEF\xBF\xBD") << "invalid UTF-8 becomes U+FFFD";
  EXPECT_NO_THROW(nlohmann::json(args).dump());
  fs::remove_all(root);
}

// On this host: the facts have the record's types, and the tool names this build and process.
TEST(HostFacts, ThisHostsRecordHasEveryFactWithItsType) {
  RunConfig cfg;
  HostInfo host = probe_host(nullptr);
  RunTiming t{1, 10, 20, 30};
  auto r = make_run_record(cfg, host, {}, t, EndReason::AllExited, {});
  const auto& h = r["host"];
  EXPECT_TRUE(h["kernel"].is_string() && !h["kernel"].get<std::string>().empty());
  EXPECT_TRUE(h["cpu_model"].is_string());
  EXPECT_TRUE(h["microcode"].is_string() || h["microcode"].is_null());
  EXPECT_TRUE(h["smt"]["active"].is_boolean() || h["smt"]["active"].is_null());
  EXPECT_TRUE(h["smt"]["control"].is_string() || h["smt"]["control"].is_null());
  if (!h["smt"]["threads_per_core"].is_null()) {
    EXPECT_GE(h["smt"]["threads_per_core"].get<int>(), 1);
  }
  ASSERT_TRUE(h["numa"].is_array());
  for (const auto& n : h["numa"]) {
    EXPECT_TRUE(n["node"].is_number_integer());
    EXPECT_GE(cpulist_count(n["cpus"].get<std::string>()), 0) << n;
    EXPECT_TRUE(n["mem_total"].is_number_unsigned());
  }
  ASSERT_TRUE(h["kvm_params"].is_object());
  for (const auto& [module, params] : h["kvm_params"].items()) {
    EXPECT_EQ(module.rfind("kvm", 0), 0u) << module;
    for (const auto& [name, value] : params.items()) EXPECT_TRUE(value.is_string()) << name;
  }
  if (fs::exists("/sys/module/kvm/parameters/halt_poll_ns")) {
    EXPECT_TRUE(h["kvm_params"]["kvm"].contains("halt_poll_ns"));
  }
  const auto& tool = r["tool"];
  EXPECT_EQ(tool["version"], version_string());
  EXPECT_TRUE(tool["build_type"].is_string());
  EXPECT_TRUE(tool["sanitize"].is_string());
  EXPECT_TRUE(tool["probes"].is_boolean());
  ASSERT_TRUE(tool["command_line"].is_array());
  ASSERT_FALSE(tool["command_line"].empty());
  EXPECT_NE(tool["command_line"][0].get<std::string>().find("unit_tests"), std::string::npos)
      << tool["command_line"];
}
