// The kvmscale binary as a user meets it: usage errors, --json, SIGINT.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "app/record.hpp"
#include "kvm_helpers.hpp"
#include "vmm/guest_images.hpp"

using namespace kvmscale;
namespace fs = std::filesystem;

namespace {
test::Spawned ks(std::vector<std::string> args, int sigint_after_ms = 0) {
  args.insert(args.begin(), KVMSCALE_BIN);
  return test::spawn(args, sigint_after_ms);
}
fs::path scratch(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kvmscale-cli-" + std::to_string(getpid()));
  fs::create_directories(d);
  return d / name;
}
}  // namespace

TEST(Cli, BadUsageExitsTwoWithAClearMessage) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  } cases[] = {
      {{}, "ubcommand"},
      {{"nosuchcmd"}, "unknown command 'nosuchcmd'"},
      {{"matrix", "--vms", "1,2", "--seed", "-1", "--dry-run"}, "--seed"},
      {{"run", "--vcpu-pin", "9:9"}, "none, 1:1 or a list"},
      {{"run", "--sched", "credit", "--vms", "2", "--vm", "vm0:weight=5", "--vm", "vm0:weight=9"},
       "given twice"},
      {{"run", "--vms", "0"}, "--vms"},
      {{"run", "--vms", "lots"}, "--vms"},
      {{"run", "--vms", "0x10"}, "not a decimal count"},
      {{"run", "--vms", "010"}, "not a decimal count"},
      {{"run", "--vcpus", "+2"}, "not a decimal count"},
      {{"run", "--sched", "credit", "--pcpus", "0x2"}, "not a decimal count"},
      {{"run", "--sched", "credit", "--pcpus", "0"}, "omit --pcpus"},
      {{"run", "--fault-threads", "0x4"}, "not a decimal count"},
      {{"matrix", "--vms", "1,0x10", "--dry-run"}, "not a decimal count"},
      {{"matrix", "--vms", "1,2", "--repeat", "0x3", "--dry-run"}, "not a decimal count"},
      {{"scenario", "call-lock", "--repeat", "0x3"}, "not a decimal count"},
      {{"run", "--mem", "3X"}, "--mem"},
      {{"run", "--mem", "9M"}, "multiple of 2M"},
      {{"run", "--mem", ".x"}, "--mem"},  // was "stod", exit 1 (found by fuzz_run_flags)
      {{"run", "--duration", "."}, "--duration"},
      {{"run", "--duration", "soon"}, "--duration"},
      {{"run", "--guest", "nosuch"}, "unknown --guest 'nosuch'"},
      {{"run", "--guest-arg", "x"}, "--guest-arg"},
      {{"run", "--frobnicate"}, "frobnicate"},
      {{"run", "--sched", "cfs"}, "--sched"},
      {{"run", "--numa"}, "--numa needs"},
      {{"run", "--sched", "credit", "--balance", "greedy"}, "--balance"},
      {{"run", "--sched", "credit", "--vcpu-pin", "0,99"}, "pCPU 99 does not exist"},
      {{"run", "--vm", "vm9:weight=2", "--vms", "2"}, "only 2 VMs"},
      {{"run", "--vm", "vm0:speed=2"}, "unknown setting"},
      {{"run", "--tslice", "0ms"}, "--tslice"},
      {{"run", "--lock", "call=fast"}, "valid: ticket"},
      {{"run", "--pod-target", "150%"}, "1-100"},
      {{"run", "--pod-target", "1G", "--mem", "16M"}, "exceeds the guest's free RAM"},
      {{"run", "--pod-target", "lots"}, "--pod-target"},
      {{"run", "--pod-granule", "8K"}, "4K or 2M"},
      {{"run", "--call-lock", "none"}, "--call-lock"},
      {{"run", "--pod-reclaim", "lazy"}, "--pod-reclaim"},
      {{"run", "--fault-threads", "1025"}, "--fault-threads"},
      {{"matrix", "--vms", "1,0"}, "vms-0_r0"},
      {{"matrix", "--vms", "1,1"}, "repeated"},
      {{"matrix", "--resume"}, "--resume needs --out"},
      {{"matrix", "--repeat", "0"}, "--repeat"},
      {{"compare", "/nonexistent-a", "/nonexistent-b"}, "no such file"},
      {{"compare", "only-one"}, "B"},
      {{"compare", "--metrics", "nosuch", "/dev/null", "/dev/null"},
       "/dev/null is not a finished run record: not a regular file"},
      {{"scenario", "nosuch"}, "nosuch"},
      {{"matrix", "--cell", "vms-1_r0"}, "--cell needs --out"},
      {{"matrix", "--vms", "1,2", "--sbatch-arg=--exclusive"}, "need --slurm"},
      {{"matrix", "--collect", "--out", "/nonexistent-m", "--vms", "1,2"}, "from --out"},
      {{"matrix", "--matrix-digest", "0", "--out", "/nonexistent-m"}, "needs --cell"},
      {{"matrix", "--cell", "vms-1_r0", "--out", "/nonexistent-m"}, "holds no matrix"},
      {{"matrix", "--collect", "--out", "/nonexistent-m"}, "holds no matrix"},
      {{"matrix", "--vms", "1,2", "--slurm", "--out", "/tmp/a dir"}, "holds a blank"},
      {{"matrix", "--vms", "1,2", "--slurm", "--sbatch-arg", "big", "--out", "/nonexistent-m"},
       "not an sbatch option"},
      {{"compare", "--by", "host", "/nonexistent-m"}, "needs matrix directories"},
      // Checked before the benchmark (it ran first and then failed to write, exit 1).
      {{"bench-locks", "--quick", "--json", "/nonexistent-dir/locks.json"}, "--json"},
      {{"bench-locks", "--quick", "--csv", "/proc/locks.csv"}, "--csv"},
      {{"bench-locks", "--quick", "--json", "/tmp"}, "not a regular file"},
  };
  for (const auto& c : cases) {
    auto r = ks(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  EXPECT_FALSE(fs::exists("/nonexistent-m")) << "a refused command created its --out";
}

TEST(Cli, HelpShowsExamples) {
  auto r = ks({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("Examples:"), std::string::npos);
}

TEST(Cli, InfoWorksWithOrWithoutKvm) {
  auto r = ks({"info", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["online_cpus"].get<int>(), 0);
  EXPECT_TRUE(j.contains("backend"));
}

TEST(Cli, JsonModePrintsOnlyTheRecord) {
  SKIP_WITHOUT_KVM();
  fs::path out = scratch("hello.json");
  auto r = ks({"run", "--guest", "hello", "--vms", "2", "--mem", "8M", "--json", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);  // throws if anything but JSON is on stdout
  EXPECT_EQ(j["summary"]["vms_booted"], 2);
  std::ifstream f(out);
  EXPECT_EQ(nlohmann::json::parse(f), j) << "file and stdout hold the same record";
}

TEST(Cli, SigintEndsTheRunWithAValidPartialRecord) {
  SKIP_WITHOUT_KVM();
  fs::path out = scratch("interrupted.json");
  auto r =
      ks({"run", "--guest", "spin", "--vms", "2", "--mem", "8M", "--duration", "60s", "--out", out},
         1500);
  EXPECT_EQ(r.exit_code, 130) << r.err;
  std::ifstream f(out);
  ASSERT_TRUE(f.good()) << "no record written";
  auto j = nlohmann::json::parse(f);
  EXPECT_TRUE(j["run"]["interrupted"].get<bool>());
  EXPECT_EQ(j["run"]["end_reason"], "interrupted");
  EXPECT_EQ(j["vms"].size(), 2u);
  EXPECT_GT(j["vms"][0]["metrics"]["iterations"].get<uint64_t>(), 0u);
}

// The issue's acceptance shape: a 2x2x2 matrix gives its CSV and PNG plots.
TEST(CliMatrix, TwoByTwoByTwoMatrixWritesCsvAndPlots) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("m222");
  fs::remove_all(dir);
  auto r = ks({"matrix", "--guest",     "hello",  "--mem",      "8M",          "--vms",
               "1,2",    "--vcpus",     "1,2",    "--sched",    "host,credit", "--pcpus",
               "2",      "--pcpu-bind", "--lock", "spin-yield", "--repeat",    "1",
               "--seed", "3",           "--out",  dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("[8/8]"), std::string::npos) << r.err;
  std::ifstream csv(dir / "summary.csv");
  std::string line;
  int lines = 0;
  while (std::getline(csv, line)) lines++;
  EXPECT_EQ(lines, 9);
  EXPECT_TRUE(fs::exists(dir / "plots" / "boot_max_ms.png")) << r.err;
  EXPECT_TRUE(fs::exists(dir / "plots" / "boot_max_ms.svg"));
  // A boolean run flag passes through as a flag, not as a value-taking option.
  auto spec = nlohmann::json::parse(std::ifstream(dir / "matrix.json"))["spec"];
  EXPECT_NE(spec["fixed"].dump().find("{\"flag\":\"pcpu-bind\",\"value\":\"\"}"), std::string::npos)
      << spec;
  // Comparing the matrix with itself: same medians, nothing significant.
  auto c = ks({"compare", "--json", dir, dir});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  auto j = nlohmann::json::parse(c.out);
  for (const auto& m : j["metrics"]) EXPECT_FALSE(m["significant"].get<bool>()) << m;
  // Group by group, options on both sides of the paths.
  auto g = ks({"compare", "--by", "vms,sched", dir, dir, "--json", "--metrics", "boot_max_ms"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  auto gj = nlohmann::json::parse(g.out);
  ASSERT_EQ(gj["groups"].size(), 4u) << g.out;
  EXPECT_EQ(gj["groups"][0]["group"], "vms=1 sched=credit");
  EXPECT_EQ(gj["groups"][0]["metrics"].size(), 1u);
}

// --procs is an axis, and each cell is planned as `run` plans it: the study can compare one VMM
// process with several (notifier fan-out, PoD, docs/scale.md) in one matrix. Before, "1,2" was
// refused as a --procs value and every cell ran in one process.
TEST(CliMatrix, ProcsIsAnAxisAndEachCellRunsInItsProcesses) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("mprocs");
  fs::remove_all(dir);
  auto r = ks({"matrix", "--guest", "hello", "--mem", "8M", "--vms", "2", "--vcpus", "1", "--sched",
               "credit", "--pcpus", "2", "--procs", "1,2", "--repeat", "1", "--out", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, uint64_t> processes;  // the cell's --procs -> processes it ran in
  for (const auto& e : fs::directory_iterator(dir / "cells")) {
    auto rec = nlohmann::json::parse(std::ifstream(e.path()));
    processes[rec["config"]["procs"].get<std::string>()] =
        rec["run"]["procs"]["count"].get<uint64_t>();
    EXPECT_EQ(rec["summary"]["vms_booted"], 2) << e.path();
  }
  EXPECT_EQ(processes, (std::map<std::string, uint64_t>{{"1", 1}, {"2", 2}}));
  std::ifstream csv(dir / "summary.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_NE(header.find(",procs,"), std::string::npos) << header;
}

TEST(CliMatrix, SigintKeepsFinishedRunsAndResumeCompletesTheRest) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("mresume");
  fs::remove_all(dir);
  std::vector<std::string> args = {"matrix", "--guest", "spin",       "--mem", "8M",
                                   "--vms",  "1,2",     "--duration", "2s",    "--repeat",
                                   "2",      "--out",   dir};
  auto r = ks(args, 5000);  // one or two of the four two-second runs finish, even on a busy host
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;
  size_t kept = 0;
  for (const auto& e : fs::directory_iterator(dir / "cells")) kept += e.is_regular_file();
  EXPECT_GE(kept, 1u);
  EXPECT_LT(kept, 4u);
  for (const auto& e : fs::directory_iterator(dir / "cells")) {
    auto rec = nlohmann::json::parse(std::ifstream(e.path()));
    EXPECT_FALSE(rec["run"]["interrupted"].get<bool>()) << e.path();
  }
  auto again = ks({"matrix", "--resume", "--out", dir});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("resuming: " + std::to_string(kept) + " of 4"), std::string::npos)
      << again.err;
  size_t all = 0;
  for (const auto& e : fs::directory_iterator(dir / "cells")) all += e.is_regular_file();
  EXPECT_EQ(all, 4u);
  // Different flags on the same directory are refused.
  auto other = ks({"matrix", "--resume", "--out", dir, "--vms", "1,3"});
  EXPECT_EQ(other.exit_code, 2);
  EXPECT_NE(other.err.find("differ"), std::string::npos) << other.err;
}

TEST(Cli, BenchLocksQuickWritesCsvWithRatios) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "TSan build: Concurrency Kit's inline-assembly atomics are invisible to TSan, so "
                  "bench-locks leaves ck out and there is no ck ratio to check";
#endif
  fs::path csv = scratch("locks.csv");
  auto r = ks({"bench-locks", "--quick", "--threads", "1,2", "--locks",
               "ticket,ck:ticket,spin-yield", "--csv", csv});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vs ck:ticket"), std::string::npos) << r.out;
  std::ifstream f(csv);
  std::string header, line;
  std::getline(f, header);
  EXPECT_EQ(header, "test,lock,threads,value,unit,extra");
  int rows = 0, ratios = 0;
  while (std::getline(f, line)) {
    rows++;
    ratios += line.find("ratio=") != std::string::npos;
  }
  EXPECT_EQ(rows, 3 + 3 * 2 + 3) << "uncontended + throughput cells + handoff";
  EXPECT_EQ(ratios, 1) << "ticket is compared with ck:ticket";
  auto bad = ks({"bench-locks", "--locks", "nosuch"});
  EXPECT_EQ(bad.exit_code, 2);
}

TEST(Cli, GuestArgumentsArriveExactly) {
  SKIP_WITHOUT_KVM();
  auto r = ks({"run", "--guest", "hello", "--vcpus", "1", "--mem", "8M", "--guest-arg",
               "9007199254740993,0xffffffffffffffff", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rec = nlohmann::json::parse(r.out);
  EXPECT_EQ(rec["config"]["guest_args"],
            (nlohmann::json{9007199254740993ull, 18446744073709551615ull}));
}

TEST(Cli, AMatrixFileWithAnEmptyAxisIsRefusedNotACrash) {
  fs::path dir = scratch("bad-matrix");
  fs::create_directories(dir);
  std::ofstream(dir / "matrix.json")
      << R"({"spec": {"axes": [{"flag": "vms", "values": []}], "fixed": [], "repeat": 1,
                      "seed": 1}})";
  for (std::vector<std::string> args :
       {std::vector<std::string>{"matrix", "--resume", "--out", dir.string()},
        {"matrix", "--resume", "--dry-run", "--out", dir.string()},
        {"compare", "--by", "vms", dir.string(), dir.string()}}) {
    auto r = ks(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[1] << ": " << r.err;
    EXPECT_NE(r.err.find("at least 2 values"), std::string::npos) << r.err;
  }
}

TEST(Cli, GuestFilesThatAreNotRegularFilesAreRefusedAtOnce) {
  fs::path fifo = scratch("image.fifo");
  fs::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  fs::path dir = scratch("image-dir");
  fs::create_directories(dir);
  fs::path big = scratch("big.bin");
  std::ofstream(big, std::ios::binary) << std::string((1 << 20) + 1, '\x90');
  struct Case {
    std::string path, message;
  } cases[] = {{"/dev/zero", "not a regular file"},    // used to read forever
               {fifo.string(), "not a regular file"},  // used to block forever
               {dir.string(), "not a regular file"},
               {big.string(), "1 MiB"},
               {"/nonexistent/image", "No such file"}};
  for (const auto& c : cases) {
    auto r = test::spawn({KVMSCALE_BIN, "run", "--guest-file", c.path, "--mem", "8M"}, 0, 20000);
    EXPECT_EQ(r.exit_code, 2) << c.path << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}

TEST(Cli, SigintInheritedAsIgnoredStillStopsTheRun) {
  SKIP_WITHOUT_KVM();
  auto r = test::spawn({KVMSCALE_BIN, "run", "--guest", "spin", "--vcpus", "1", "--mem", "8M",
                        "--duration", "60s", "--json"},
                       1000, 30000, /*sigint_ignored=*/true);
  EXPECT_EQ(r.exit_code, 130) << r.err;
}

TEST(Cli, AnUnusableOutIsRefusedBeforeTheRun) {
  for (const std::string out : {"/dev/null", "/proc/self/kvmscale.json", "/proc/kvmscale-out"}) {
    auto r = ks({"run", "--guest", "spin", "--duration", "30s", "--out", out});
    EXPECT_EQ(r.exit_code, 2) << out << ": " << r.err;  // at once: not after a 30 s run
    EXPECT_NE(r.err.find("--out"), std::string::npos) << r.err;
  }
}

TEST(Cli, ARecordIsNeverOverwrittenUnlessForced) {
  SKIP_WITHOUT_KVM();
  fs::path out = scratch("same.json");
  fs::remove(out);
  std::vector<std::string> args = {"run",   "--guest", "hello", "--vcpus",   "1",
                                   "--mem", "8M",      "--out", out.string()};
  ASSERT_EQ(ks(args).exit_code, 0);
  auto before = fs::last_write_time(out);
  auto again = ks(args);
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("--force"), std::string::npos) << again.err;
  EXPECT_EQ(fs::last_write_time(out), before) << "the first record is untouched";
  args.push_back("--force");
  EXPECT_EQ(ks(args).exit_code, 0);
}

TEST(Cli, ARecordThatCannotBeWrittenGoesToStdout) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("vanishing");
  fs::create_directories(dir);
  // The directory becomes a file while the run goes on: the write fails, the record is not lost.
  // The run is 5 s; the output check is long done after 2.5 s even under a sanitizer.
  std::thread remover([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    fs::remove_all(dir);
    std::ofstream(dir) << "not a directory";
  });
  auto r = ks({"run", "--guest", "spin", "--vcpus", "1", "--mem", "8M", "--duration", "5s", "--out",
               (dir / "r.json").string()});
  remover.join();
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("record follows on stdout"), std::string::npos) << r.err;
  auto rec = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(rec.is_discarded()) << r.out.substr(0, 200);
  EXPECT_EQ(rec["schema_version"], kvmscale::app::kRecordSchemaVersion);
}

// Two runs with the same --out FILE.json: the check before the run passes for both, and the one
// that finishes second must not overwrite the first one's record. Here "the first" is a file
// written while the run goes on; it is kept, and the run's own record goes to stdout. Before,
// the finished run silently replaced it.
TEST(Cli, ARecordWrittenByAnotherRunMeanwhileIsKept) {
  SKIP_WITHOUT_KVM();
  fs::path out = scratch("raced.json");
  fs::remove(out);
  const std::string theirs = "{\"another run's record\": true}";
  std::thread other([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // (see the test above)
    std::ofstream(out) << theirs;
  });
  auto r = ks({"run", "--guest", "spin", "--vcpus", "1", "--mem", "8M", "--duration", "5s", "--out",
               out.string()});
  other.join();
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("another process wrote it during this run"), std::string::npos) << r.err;
  std::ifstream f(out);
  std::string kept((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, theirs);
  auto rec = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(rec.is_discarded()) << r.out.substr(0, 200);
  EXPECT_EQ(rec["summary"]["vms_booted"], rec["config"]["vms"]);
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    EXPECT_NE(e.path().filename().string().rfind(".raced.json.tmp", 0), 0u) << "left behind";
}

TEST(CliMatrix, ASecondWriterOfTheSameDirectoryIsRefused) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("two-writers");
  fs::remove_all(dir);
  const std::vector<std::string> args = {"matrix", "--guest", "spin",     "--mem", "8M",
                                         "--vms",  "1,2",     "--repeat", "1",     "--duration",
                                         "2s",     "--out",   dir};
  test::Spawned first;
  std::thread t([&] { first = ks(args); });
  // Start the second writer only once the first holds the directory (its pid is in DIR/.lock).
  for (int i = 0; i < 600; i++) {
    std::string pid;
    std::ifstream(dir / ".lock") >> pid;
    if (!pid.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto second = ks(args);
  auto resume = ks({"matrix", "--resume", "--out", dir});
  t.join();
  EXPECT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(second.exit_code, 2) << second.err;
  EXPECT_NE(second.err.find("in use by another kvmscale"), std::string::npos) << second.err;
  EXPECT_EQ(resume.exit_code, 2) << resume.err;
  size_t cells = 0;
  for (const auto& e : fs::directory_iterator(dir / "cells")) cells += e.is_regular_file();
  EXPECT_EQ(cells, 2u) << "only the first matrix's runs";
}

// The Slurm flow without Slurm: the script written by --slurm --no-submit, run by bash as each
// array task would be, then --collect and compare --by host.
TEST(CliMatrix, SlurmScriptTasksRunTheirCellsAndCollectBuildsTheCsv) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("slurm");
  fs::remove_all(dir);
  auto sub = ks({"matrix", "--guest", "spin", "--mem", "8M", "--vms", "1,2", "--duration", "200ms",
                 "--repeat", "1", "--no-plots", "--slurm", "--no-submit", "--out", dir});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  EXPECT_NE(sub.err.find("not submitted (--no-submit)"), std::string::npos) << sub.err;
  const fs::path script = dir / "slurm" / "submit-1.sbatch";
  ASSERT_TRUE(fs::exists(script));
  for (const char* task : {"0", "1"}) {
    auto r = test::spawn(
        {"/usr/bin/env", std::string("SLURM_ARRAY_TASK_ID=") + task, "bash", script.string()});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("written to"), std::string::npos) << r.err;
  }
  auto again = test::spawn({"/usr/bin/env", "SLURM_ARRAY_TASK_ID=0", "bash", script.string()});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("already finished"), std::string::npos) << again.err;
  auto collect = ks({"matrix", "--collect", "--out", dir, "--no-plots"});
  ASSERT_EQ(collect.exit_code, 0) << collect.err;
  EXPECT_NE(collect.err.find("2 of 2 runs"), std::string::npos) << collect.err;
  std::ifstream csv(dir / "summary.csv");
  int lines = 0;
  for (std::string l; std::getline(csv, l);) lines++;
  EXPECT_EQ(lines, 3);
  // All ran here: one host, nothing to compare.
  auto by_host = ks({"compare", "--by", "host", dir});
  EXPECT_EQ(by_host.exit_code, 2) << by_host.err;
  EXPECT_NE(by_host.err.find("two different host values"), std::string::npos) << by_host.err;
  // Everything finished: a resubmission has nothing to do (and needs no sbatch for it).
  auto done = ks({"matrix", "--resume", "--slurm", "--no-submit", "--out", dir, "--no-plots"});
  EXPECT_EQ(done.exit_code, 0) << done.err;
  EXPECT_NE(done.err.find("nothing to submit"), std::string::npos) << done.err;
  // Without sbatch on PATH a submission fails clearly (the script stays for a manual sbatch).
  fs::path dir2 = scratch("slurm-no-sbatch");
  fs::remove_all(dir2);
  auto nosb = test::spawn({"/usr/bin/env", "PATH=/nonexistent", KVMSCALE_BIN, "matrix", "--guest",
                           "spin", "--vms", "1,2", "--slurm", "--out", dir2.string()});
  EXPECT_EQ(nosb.exit_code, 1) << nosb.err;
  EXPECT_NE(nosb.err.find("sbatch: cannot run it"), std::string::npos) << nosb.err;
  EXPECT_TRUE(fs::exists(dir2 / "slurm" / "submit-1.sbatch"));
}

// A FIFO where kvmscale reads a file (a cell's record, matrix.json, slurm/jobs.txt,
// scenario.json) is refused at once, named; each used to block the command for ever.
TEST(CliMatrix, FifosWhereFilesAreReadAreNamedNotWaitedFor) {
  const fs::path dir = scratch("fifo-matrix");
  fs::remove_all(dir);
  auto sub = ks({"matrix", "--guest", "spin", "--vms", "1,2", "--no-plots", "--slurm",
                 "--no-submit", "--out", dir});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  auto fifo = [](const fs::path& p) {
    fs::remove(p);
    ASSERT_EQ(mkfifo(p.c_str(), 0600), 0) << p;
  };
  auto run = [](std::vector<std::string> args) {
    args.insert(args.begin(), KVMSCALE_BIN);
    return test::spawn(args, 0, 20000);
  };
  fifo(dir / "cells" / "vms-1_r0.json");
  auto collect = run({"matrix", "--collect", "--no-plots", "--out", dir});
  EXPECT_EQ(collect.exit_code, 0) << collect.err;
  EXPECT_NE(collect.err.find("cells/vms-1_r0.json: not a regular file (a FIFO)"), std::string::npos)
      << collect.err;
  auto cmp = run({"compare", dir, dir});
  EXPECT_EQ(cmp.exit_code, 2) << cmp.err;
  EXPECT_NE(cmp.err.find("not a regular file (a FIFO)"), std::string::npos) << cmp.err;
  fifo(dir / "slurm" / "jobs.txt");
  collect = run({"matrix", "--collect", "--no-plots", "--out", dir});
  EXPECT_EQ(collect.exit_code, 2) << collect.err;
  EXPECT_NE(collect.err.find("jobs.txt: not a regular file (a FIFO)"), std::string::npos)
      << collect.err;
  fs::remove(dir / "slurm" / "jobs.txt");
  fifo(dir / "matrix.json");
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"matrix", "--collect", "--no-plots", "--out", dir},
                                             {"matrix", "--resume", "--no-plots", "--out", dir},
                                             {"compare", dir, dir}}) {
    auto r = run(args);
    EXPECT_EQ(r.exit_code, 2) << args[1] << ": " << r.err;
    EXPECT_NE(r.err.find("matrix.json: not a regular file (a FIFO)"), std::string::npos)
        << args[1] << ": " << r.err;
  }
  const fs::path scen = scratch("fifo-scenario");
  fs::remove_all(scen);
  fs::create_directories(scen);
  fifo(scen / "scenario.json");
  auto s = run({"scenario", "call-lock", "--resume", "--out", scen});
  EXPECT_EQ(s.exit_code, 2) << s.err;
  EXPECT_NE(s.err.find("scenario.json: not a regular file (a FIFO)"), std::string::npos) << s.err;
}

TEST(Cli, FlagsARunIgnoresAreWarnedAndRecorded) {
  SKIP_WITHOUT_KVM();
  auto r = ks({"run", "--guest", "hello", "--vcpus", "1", "--mem", "8M", "--sched", "host",
               "--pcpus", "2", "--vcpu-pin", "1:1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rec = nlohmann::json::parse(r.out);
  std::string all = rec["run"]["warnings"].dump();
  EXPECT_NE(all.find("--pcpus has no effect with --sched host"), std::string::npos) << all;
  EXPECT_NE(all.find("--vcpu-pin has no effect"), std::string::npos) << all;
}

TEST(Cli, AFileImageCanBeOneGuestOfAMix) {
  SKIP_WITHOUT_KVM();
  fs::path image = scratch("hello-copy.bin");
  auto hello = vmm::builtin_guest_image("hello");
  std::ofstream(image, std::ios::binary)
      .write(reinterpret_cast<const char*>(hello.data()), std::streamsize(hello.size()));
  auto r = ks({"run", "--guest", "idle,file:" + image.string(), "--guest-arg", "1000000", "--vms",
               "2", "--vcpus", "1", "--mem", "8M", "--duration", "2s", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rec = nlohmann::json::parse(r.out);
  EXPECT_EQ(rec["vms"][1]["guest"], "file:" + image.string());
  EXPECT_NE(rec["vms"][1]["console"].get<std::string>().find("hello from vm 1"), std::string::npos);
  auto both = ks({"run", "--guest", "hello", "--guest-file", image.string()});
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.err.find(",file:"), std::string::npos) << both.err;
}

TEST(Cli, AHugeMatrixIsRefusedAtOnceUnlessForced) {
  // 100 x 100 x 11 cells x 1000 repeats = 110 million runs: refused before any expansion.
  std::string a, b, c;
  for (int i = 1; i <= 100; i++) a += (i > 1 ? "," : "") + std::to_string(i);
  for (int i = 1; i <= 100; i++) b += (i > 1 ? "," : "") + std::to_string(i) + "s";
  for (int i = 0; i <= 10; i++) c += (i > 0 ? "," : "") + std::to_string(i * 10) + "%";
  // Expanded and validated it would take tens of minutes: spawn's timeout (SIGKILL, exit -1)
  // fails the test then, with no time asserted here.
  auto r = ks(
      {"matrix", "--vms", a, "--duration", b, "--pod-target", c, "--repeat", "1000", "--dry-run"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("110000000 runs"), std::string::npos) << r.err;
}

TEST(CliMatrix, AnInterruptedScenarioResumesFromItsOwnSettings) {
  SKIP_WITHOUT_KVM();
  fs::path dir = scratch("scenario-resume");
  fs::remove_all(dir);
  // 8 runs of 0.5 s: interrupted after about half.
  auto r = ks({"scenario", "credit-balance", "--repeat", "1", "--duration", "500ms", "--seed", "3",
               "--no-plots", "--out", dir},
              2500);
  ASSERT_EQ(r.exit_code, 130) << r.err;
  // Resumed as the hint says, without repeating --repeat and --duration.
  auto again = ks({"scenario", "credit-balance", "--resume", "--no-plots", "--out", dir});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("resuming with the stored settings (repeat 1, duration 500ms"),
            std::string::npos)
      << again.err;
  EXPECT_TRUE(fs::exists(dir / "verdict.txt"));
  size_t cells = 0;
  for (const auto& e : fs::directory_iterator(dir / "cells")) cells += e.is_regular_file();
  EXPECT_EQ(cells, 8u);
  // matrix --resume on a finished scenario writes its verdict too.
  fs::remove(dir / "verdict.txt");
  auto m = ks({"matrix", "--resume", "--no-plots", "--out", dir});
  EXPECT_EQ(m.exit_code, 0) << m.err;
  EXPECT_TRUE(fs::exists(dir / "verdict.txt"));
}

// A command refused for bad input writes nothing, not even its directory: everything is checked,
// then written (before, a scenario with a bad --duration left DIR/scenario.json, after which only
// deleting DIR helped; a matrix or run with a missing image left DIR behind).
TEST(Cli, ARefusedCommandWritesNothing) {
  fs::path dir = scratch("refused");
  fs::remove_all(dir);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"scenario", "credit-balance", "--duration", "soon", "--out", dir.string()}, "--duration"},
      {{"matrix", "--vms", "1,2", "--guest", "spin,file:/nonexistent/image", "--out", dir.string()},
       "/nonexistent/image"},
      {{"matrix", "--vms", "1,2", "--guest", "spin,file:/nonexistent/image", "--slurm",
        "--no-submit", "--out", dir.string()},
       "/nonexistent/image"},
      {{"run", "--guest-file", "/nonexistent/image", "--out", (dir / "r.json").string()},
       "/nonexistent/image"},
  };
  for (const auto& c : cases) {
    auto r = ks(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir)) << c.args[0] << " " << c.args[1] << " wrote " << dir;
    fs::remove_all(dir);
  }
}

// A long but valid axis value: --dry-run and the real matrix agree (both list and use the same
// short ids); before, --dry-run passed and the matrix ended with "File name too long".
TEST(CliMatrix, AValueLongerThanAFileNameWorksInDryRunAndRun) {
  fs::path images = scratch("long-ids") / std::string(200, 'd');
  fs::create_directories(images);
  const fs::path image = images / (std::string(100, 'i') + ".bin");
  auto hello = vmm::builtin_guest_image("hello");
  std::ofstream(image, std::ios::binary)
      .write(reinterpret_cast<const char*>(hello.data()), std::streamsize(hello.size()));
  const fs::path dir = scratch("long-ids") / "m";
  fs::remove_all(dir);
  const std::vector<std::string> args = {"matrix",     "--guest",  "hello,file:" + image.string(),
                                         "--mem",      "8M",       "--vcpus",
                                         "1",          "--repeat", "1",
                                         "--no-plots", "--out",    dir.string()};
  std::vector<std::string> dry = args;
  dry.push_back("--dry-run");
  auto d = ks(dry);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_NE(d.out.find("  guest-hello_r0:"), std::string::npos) << d.out;
  const size_t at = d.out.find("  guest-file-");
  ASSERT_NE(at, std::string::npos) << d.out;
  const std::string long_id = d.out.substr(at + 2, d.out.find(':', at) - at - 2);
  EXPECT_LE(long_id.size(), 237u) << long_id;
  // Without KVM both runs fail (exit 1), with it both run: either way each cell is accounted for
  // under its id and the summary is written.
  auto r = ks(args);
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << r.err;
  EXPECT_EQ(r.err.find("too long"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir / "summary.csv")) << r.err;
  EXPECT_TRUE(fs::exists(dir / "cells" / (long_id + ".json")) ||
              fs::exists(dir / "failed" / (long_id + ".txt")))
      << r.err;
}

// A hung sbatch ends the submission after --slurm-timeout, naming sbatch and the timeout, and
// the directory is free again (before, the command waited for ever holding its lock).
TEST(CliMatrix, AHungSbatchEndsTheSubmissionAfterTheSlurmTimeout) {
  const fs::path bin = scratch("hung-slurm-bin"), dir = scratch("hung-slurm");
  fs::create_directories(bin);
  fs::remove_all(dir);
  std::ofstream(bin / "sbatch") << "#!/bin/bash\n/bin/sleep 1000 &\nwait\n";
  fs::permissions(bin / "sbatch", fs::perms::owner_all);
  auto r = test::spawn(
      {"/usr/bin/env", "PATH=" + bin.string(), KVMSCALE_BIN, "matrix", "--guest", "spin", "--vms",
       "1,2", "--slurm", "--slurm-timeout", "1s", "--out", dir.string()},
      0, 60000);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("sbatch did not finish within 1s"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--slurm-timeout"), std::string::npos) << r.err;
  auto again = ks({"matrix", "--resume", "--slurm", "--no-submit", "--out", dir.string()});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  // --slurm-timeout is for what calls Slurm: --slurm and --collect.
  auto bad = ks({"matrix", "--vms", "1,2", "--slurm-timeout", "1s", "--dry-run"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  auto zero = ks({"matrix", "--collect", "--slurm-timeout", "0s", "--out", dir.string()});
  EXPECT_EQ(zero.exit_code, 2) << zero.err;
  EXPECT_NE(zero.err.find("--slurm-timeout"), std::string::npos) << zero.err;
}
