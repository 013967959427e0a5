// `run --procs K`: a run sharded over VMM child processes (app/procs.hpp), as a user meets it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "kvm_helpers.hpp"
#include "vmm/clock.hpp"

using namespace kvmscale;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path scratch(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("kvmscale-procs-test-" + std::to_string(getpid()));
  fs::create_directories(d);
  return d / name;
}

json run_record(std::vector<std::string> args, const std::string& name, int* exit_code,
                int sigint_after_ms = 0) {
  const fs::path out = scratch(name);
  args.insert(args.begin(), {KVMSCALE_BIN, "run"});
  args.insert(args.end(), {"--out", out.string(), "--force"});
  test::Spawned s = test::spawn(args, sigint_after_ms, 180000);
  *exit_code = s.exit_code;
  if (!fs::exists(out)) {
    ADD_FAILURE() << "no record; stderr: " << s.err;
    return json();
  }
  std::ifstream f(out);
  return json::parse(f);
}

bool alive(pid_t pid) { return kill(pid, 0) == 0 || errno != ESRCH; }

// The children of `parent` (scanned from /proc/*/stat: the kernel here has no .../children).
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(pid_t(std::stoi(name)));
  }
  return out;
}

}  // namespace

TEST(Procs, ShardedRecordReadsLikeTheUnshardedOne) {
  SKIP_WITHOUT_KVM();
  const std::vector<std::string> run = {"--vms",      "5",  "--vcpus", "1",
                                        "--mem",      "8M", "--guest", "hello,boot-zero",
                                        "--duration", "20s"};
  auto with = [&](const std::string& k) {
    auto a = run;
    a.insert(a.end(), {"--procs", k});
    return a;
  };
  int one_rc = -1, three_rc = -1;
  json one = run_record(with("1"), "one.json", &one_rc);
  json three = run_record(with("3"), "three.json", &three_rc);
  ASSERT_EQ(one_rc, 0);
  ASSERT_EQ(three_rc, 0);
  EXPECT_FALSE(one.contains("procs"));
  EXPECT_EQ(one["run"]["procs"]["count"], 1);
  ASSERT_EQ(three["vms"].size(), one["vms"].size());
  for (size_t i = 0; i < one["vms"].size(); i++) {
    for (const char* key : {"index", "guest", "state", "exit_code", "console"})
      EXPECT_EQ(three["vms"][i][key], one["vms"][i][key]) << "vm " << i << " " << key;
    EXPECT_FALSE(three["vms"][i]["boot_ns"].is_null()) << "vm " << i;
  }
  EXPECT_EQ(three["summary"]["vms"], 5);
  EXPECT_EQ(three["summary"]["vms_booted"], 5);
  EXPECT_EQ(three["summary"]["exits_total"], one["summary"]["exits_total"]);
  EXPECT_EQ(three["config"]["procs"], "3");
  EXPECT_EQ(three["run"]["procs"]["count"], 3);
  ASSERT_EQ(three["procs"].size(), 3u);
  const uint32_t firsts[] = {0, 2, 4}, counts[] = {2, 2, 1};
  std::set<pid_t> pids;
  for (uint32_t p = 0; p < 3; p++) {
    const json& pr = three["procs"][p];
    EXPECT_EQ(pr["index"], p);
    EXPECT_EQ(pr["vms"], json({firsts[p], counts[p]}));
    EXPECT_TRUE(pr["pcpus"].is_null());  // --sched host
    EXPECT_EQ(pr["exit_status"], 0);
    EXPECT_EQ(pr["summary"]["vms"], counts[p]);
    EXPECT_EQ(pr["run"]["end_reason"], "all_exited");
    pids.insert(pr["pid"].get<pid_t>());
  }
  EXPECT_EQ(pids.size(), 3u);  // three processes
  for (pid_t pid : pids) EXPECT_FALSE(alive(pid)) << pid;
}

TEST(Procs, CreditPoolsSplitThePcpus) {
  SKIP_WITHOUT_KVM();
  int rc = -1;
  // 3 pCPUs over 2 processes: pool 0 = pCPUs 0-1, pool 1 = pCPU 2. vm2 and vm3 run in pool 1;
  // the pins name run-wide pCPUs inside each VM's pool.
  json r = run_record({"--vms",   "4",       "--vcpus",        "1",          "--mem",
                       "8M",      "--guest", "spin",           "--duration", "1s",
                       "--sched", "credit",  "--pcpus",        "3",          "--procs",
                       "2",       "--vm",    "vm3:weight=512", "--vcpu-pin", "0,1,2,2"},
                      "credit.json", &rc);
  ASSERT_EQ(rc, 0);
  ASSERT_EQ(r["procs"].size(), 2u);
  EXPECT_EQ(r["procs"][0]["pcpus"], json({0, 2}));
  EXPECT_EQ(r["procs"][1]["pcpus"], json({2, 1}));
  EXPECT_EQ(r["procs"][0]["vms"], json({0, 2}));
  EXPECT_EQ(r["procs"][1]["vms"], json({2, 2}));
  const json& s = r["sched"];
  ASSERT_EQ(s["pcpus"].size(), 3u);
  for (uint32_t p = 0; p < 3; p++) {
    EXPECT_EQ(s["pcpus"][p]["index"], p);
    EXPECT_EQ(s["pcpus"][p]["pool"], p < 2 ? 0 : 1);
  }
  ASSERT_EQ(s["vcpus"].size(), 4u);
  const char* affinity[] = {"0", "1", "2", "2"};
  for (uint32_t v = 0; v < 4; v++) {
    EXPECT_EQ(s["vcpus"][v]["id"], v);
    EXPECT_EQ(s["vcpus"][v]["domain"], v);
    EXPECT_EQ(s["vcpus"][v]["affinity"], affinity[v]);
    EXPECT_EQ(s["vcpus"][v]["pcpus_used"], affinity[v]) << "vCPU " << v << " ran off its pin";
  }
  ASSERT_EQ(s["vms"].size(), 4u);
  EXPECT_EQ(s["vms"][3]["vm"], 3);
  EXPECT_EQ(s["vms"][3]["weight"], 512);
  EXPECT_EQ(s["vms"][2]["weight"], 256);
  EXPECT_EQ(s["double_runs"], 0);
  EXPECT_EQ(r["summary"]["vms_booted"], 4);
}

// --pcpu-bind over pools: run-wide pCPU p is bound to the p-th allowed host CPU (round-robin),
// whichever process runs it, so the pools sit on distinct host CPUs where there are enough; with
// --numa each process places its own VMs' memory and the merged record lists every VM once.
// Before, each process bound its pCPU i to the i-th host CPU, and the pair was refused.
TEST(Procs, PoolsBindToTheirOwnHostCpus) {
  SKIP_WITHOUT_KVM();
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  ASSERT_EQ(sched_getaffinity(0, sizeof allowed, &allowed), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  int rc = -1;
  // One pCPU per pool: pool 1's pCPU is its own pCPU 0 but run-wide pCPU 1, so with two or
  // more host CPUs binding by the process's own numbering would put both pools on one CPU.
  json r = run_record(
      {"--vms", "2", "--vcpus", "1", "--mem", "8M", "--guest", "spin", "--duration", "1s",
       "--sched", "credit", "--pcpus", "2", "--procs", "2", "--pcpu-bind", "--numa"},
      "bind.json", &rc);
  ASSERT_EQ(rc, 0);
  const json& pcpus = r["sched"]["pcpus"];
  ASSERT_EQ(pcpus.size(), 2u);
  for (uint32_t p = 0; p < 2; p++) {
    EXPECT_EQ(pcpus[p]["pool"], p);
    EXPECT_EQ(pcpus[p]["host_cpu"], cpus[p % cpus.size()]) << "run-wide pCPU " << p;
  }
  ASSERT_EQ(r["numa_placement"].size(), 2u);
  for (uint32_t v = 0; v < 2; v++) {
    EXPECT_EQ(r["numa_placement"][v]["vm"], v);
    EXPECT_EQ(r["numa_placement"][v]["ok"], true) << r["numa_placement"][v];
  }
  EXPECT_EQ(r["summary"]["vms_booted"], 2);
}

TEST(Procs, AFailingProcessFailsTheRunAndLeavesNoProcess) {
  SKIP_WITHOUT_KVM();
  const fs::path err = scratch("failing.stderr");
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    dup2(fd, 1);
    const std::string out = scratch("failing.json").string();
    execl(KVMSCALE_BIN, KVMSCALE_BIN, "run", "--vms", "4", "--vcpus", "1", "--mem", "8M", "--guest",
          "idle", "--duration", "60s", "--procs", "2", "--out", out.c_str(), "--force", nullptr);
    _exit(127);
  }
  ASSERT_GT(pid, 0);
  std::vector<pid_t> kids;
  for (int i = 0; i < 300 && kids.size() < 2; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    kids = children_of(pid);
  }
  ASSERT_EQ(kids.size(), 2u) << "the run did not start two VMM processes";
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  kill(kids[1], SIGKILL);  // as the OOM killer would
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 3000 && done == 0; i++) {
    done = waitpid(pid, &status, WNOHANG);
    if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (done == 0) {
    kill(-pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "the parent did not end within 30 s of a child's death";
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  std::ifstream f(err);
  std::string text((std::istreambuf_iterator<char>(f)), {});
  EXPECT_NE(text.find("VMM process"), std::string::npos) << text;
  EXPECT_NE(text.find("killed by signal 9"), std::string::npos) << text;
  EXPECT_FALSE(fs::exists(scratch("failing.json"))) << "a failed run wrote a record";
  for (pid_t k : kids) EXPECT_FALSE(alive(k)) << "VMM process " << k << " left running";
}

TEST(Procs, SigintEndsEveryProcessWithAnInterruptedRecord) {
  SKIP_WITHOUT_KVM();
  int rc = -1;
  json r = run_record({"--vms", "4", "--vcpus", "1", "--mem", "8M", "--guest", "idle", "--duration",
                       "60s", "--procs", "2"},
                      "sigint.json", &rc, 2500);
  EXPECT_EQ(rc, 130);
  ASSERT_TRUE(r.contains("procs"));
  EXPECT_EQ(r["run"]["interrupted"], true);
  EXPECT_EQ(r["run"]["end_reason"], "interrupted");
  EXPECT_LT(r["run"]["wall_ns"].get<uint64_t>(), 60'000'000'000ull)
      << "ended before its --duration";
  ASSERT_EQ(r["procs"].size(), 2u);
  for (const json& p : r["procs"]) {
    EXPECT_EQ(p["exit_status"], 130);
    EXPECT_EQ(p["run"]["interrupted"], true);
    EXPECT_FALSE(alive(p["pid"].get<pid_t>()));
  }
}

TEST(Procs, BadProcsValuesAreRefused) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  } cases[] = {
      {{"--procs", "0"}, "--procs must be auto or a count"},
      {{"--procs", "two"}, "--procs must be auto or a count"},
      {{"--procs", "-1"}, "--procs must be auto or a count"},
      {{"--vms", "2", "--procs", "3"}, "exceeds --vms 2"},
      {{"--vms", "4", "--sched", "credit", "--pcpus", "2", "--procs", "3"}, "exceeds the 2 pCPUs"},
      {{"--vms", "4", "--vcpus", "1", "--sched", "credit", "--pcpus", "2", "--procs", "2",
        "--vcpu-pin", "1:1"},
       "--vcpu-pin 1:1 pins vCPU 0 of vm1 to pCPU 1"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {KVMSCALE_BIN, "run", "--out", scratch("bad").string()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    test::Spawned s = test::spawn(argv, 0, 20000);
    EXPECT_EQ(s.exit_code, 2) << c.message << "\n" << s.err;
    EXPECT_NE(s.err.find(c.message), std::string::npos) << s.err;
    EXPECT_EQ(s.err.find("[proc "), std::string::npos) << "started processes: " << s.err;
  }
}

TEST(Procs, HostMemoryIsCheckedForTheWholeRunNotPerProcess) {
  // Each process's half fits in host memory; the run does not: refused before any process starts.
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  while (meminfo >> key >> kib && key != "MemTotal:") meminfo.ignore(256, '\n');
  // boot-zero touches all its free RAM: 1 GiB each, just over the host's memory.
  const uint64_t vms = kib / (1 << 20) + 2;
  if (vms > 100000) GTEST_SKIP() << "this host's memory holds more 1G VMs than --vms allows";
  test::Spawned s = test::spawn(
      {KVMSCALE_BIN, "run", "--vms", std::to_string(vms), "--vcpus", "1", "--mem", "1G", "--guest",
       "boot-zero", "--sched", "host", "--procs", "2", "--out", scratch("mem").string()},
      0, 60000);
  EXPECT_EQ(s.exit_code, 1) << s.err;
  EXPECT_NE(s.err.find("of host memory but the host has"), std::string::npos) << s.err;
  EXPECT_EQ(s.err.find("VMM process"), std::string::npos) << "a process started: " << s.err;
  EXPECT_EQ(s.err.find("stderr ends"), std::string::npos) << "a process started: " << s.err;
  EXPECT_EQ(s.err.find("[proc "), std::string::npos) << "started processes: " << s.err;
}

TEST(Procs, PodRunsInEveryProcessWithOneFaultThreadPerPoolPcpu) {
  SKIP_WITHOUT_KVM();
  int rc = -1;
  // 3 pCPUs over 2 pools (2 + 1): "--fault-threads 0" is one per pCPU of the process's pool.
  json r = run_record(
      {"--vms", "2", "--vcpus", "2", "--mem", "16M", "--guest", "boot-zero", "--pod-target", "50%",
       "--sched", "credit", "--pcpus", "3", "--procs", "2", "--duration", "60s"},
      "pod.json", &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(r["summary"]["vms_booted"], 2);
  ASSERT_TRUE(r.contains("cross_calls"));
  EXPECT_EQ(r["tlb"]["stale_hits"], 0);
  EXPECT_EQ(r["tlb"]["flushes_received"].size(), 3u);  // every pool's pCPUs, in order
  for (const json& vm : r["vms"]) {
    ASSERT_TRUE(vm.contains("pod")) << vm["index"];
    EXPECT_GT(vm["pod"]["reclaimed"].get<uint64_t>(), 0u) << vm["index"];
  }
  uint64_t initiators = 0;
  for (const json& i : r["cross_calls"]["initiators"])
    if (!i["context"].is_null()) initiators++;
  EXPECT_LE(initiators, 3u);
  // Each process served its faults with as many threads as its pool has pCPUs: 2 + 1.
  EXPECT_EQ(r["cross_calls"]["fault_threads"], 3);
}
