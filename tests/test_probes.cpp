// The USDT probes (docs/tracing.md): the binary carries exactly the documented ones, and where
// bpftrace can attach here, probes fire during a short run with the values the record shows.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "kvm_helpers.hpp"

namespace fs = std::filesystem;
using kvmscale::test::spawn;

namespace {

// The probe names of docs/tracing.md's table: rows that start with "| `name` |".
std::set<std::string> documented_probes() {
  std::ifstream in(fs::path(KVMSCALE_SOURCE_DIR) / "docs/tracing.md");
  std::set<std::string> names;
  std::string line;
  const std::regex row(R"(^\| `([a-z0-9_]+)` \|)");
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, row)) names.insert(m[1]);
  return names;
}

// Probes of provider kvmscale in `readelf -n` output ("Provider: kvmscale" then "Name: x").
std::set<std::string> probes_in_notes(const std::string& notes) {
  std::set<std::string> names;
  std::istringstream in(notes);
  std::string line;
  bool ours = false;
  while (std::getline(in, line)) {
    line.erase(0, line.find_first_not_of(" \t"));
    if (line.rfind("Provider: ", 0) == 0) ours = line.substr(10) == "kvmscale";
    if (ours && line.rfind("Name: ", 0) == 0) names.insert(line.substr(6));
  }
  return names;
}

std::string which(const std::string& tool) {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"})
    if (access((std::string(dir) + "/" + tool).c_str(), X_OK) == 0)
      return std::string(dir) + "/" + tool;
  return {};
}

// bpftrace's "@name[key]: value" / "@name: value" lines.
std::map<std::string, long> bpftrace_maps(const std::string& out) {
  std::map<std::string, long> maps;
  std::istringstream in(out);
  std::string line;
  const std::regex kv(R"(^(@[a-z_]+(\[[^\]]*\])?): (-?[0-9]+)$)");
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_match(line, m, kv)) maps[m[1]] = std::stol(m[3]);
  return maps;
}

}  // namespace

// Seen with bpftrace 0.17: when a probe fails to attach, the child it forked for -c outlives it
// and holds the output pipes; the timeout must kill that child too.
TEST(Probes, SpawnTimeoutKillsWhatTheChildLeftBehind) {
  auto r = spawn({"/bin/sh", "-c", "sleep 300 & echo $!; exit 1"}, 0, 1500);
  const std::string pid = r.out.substr(0, r.out.find('\n'));
  ASSERT_FALSE(pid.empty());
  bool gone = false;
  for (int i = 0; i < 100 && !gone; i++) {  // init reaps it soon after the kill
    std::ifstream stat("/proc/" + pid + "/stat");
    std::string line;
    gone = !std::getline(stat, line) || line.substr(line.rfind(')') + 2, 1) == "Z";
    if (!gone) usleep(20000);
  }
  EXPECT_TRUE(gone) << "sleep " << pid << " outlived the timeout";
  if (!gone) kill(std::stoi(pid), SIGKILL);
}

TEST(Probes, NotesParser) {
  const std::string notes =
      "Displaying notes found in: .note.stapsdt\n"
      "  Owner                Data size \tDescription\n"
      "  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)\n"
      "    Provider: kvmscale\n    Name: flush\n    Location: 0x1, Base: 0x2, Semaphore: 0x3\n"
      "    Arguments: 4@%eax 8@%rdx\n"
      "  stapsdt              0x00000030\tNT_STAPSDT (SystemTap probe descriptors)\n"
      "    Provider: libstdcxx\n    Name: throw\n"
      "    Provider: kvmscale\n    Name: vm_crash\n";
  EXPECT_EQ(probes_in_notes(notes), (std::set<std::string>{"flush", "vm_crash"}));
}

TEST(Probes, BinaryCarriesEveryDocumentedProbe) {
  if (!KVMSCALE_PROBES)
    GTEST_SKIP() << "built without <sys/sdt.h> (Debian: systemtap-sdt-dev): probes compiled out";
  const std::string readelf = which("readelf");
  if (readelf.empty()) GTEST_SKIP() << "readelf (binutils) is not installed";
  const std::set<std::string> documented = documented_probes();
  ASSERT_GE(documented.size(), 20u) << "docs/tracing.md's table did not parse";
  auto r = spawn({readelf, "-n", KVMSCALE_BIN});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::set<std::string> carried = probes_in_notes(r.out);
  for (const auto& p : documented) EXPECT_TRUE(carried.count(p)) << "not in the binary: " << p;
  for (const auto& p : carried) EXPECT_TRUE(documented.count(p)) << "not documented: " << p;
}

// Two VMs of one vCPU boot under credit on one pCPU: vm_boot_done fires once per VM with the
// VM's index, and the run-queue locks report acquisitions and releases, which are timed only
// while traced: with the lock profile off, only the semaphore path of locks/probe.hpp fires them.
TEST(Probes, ProbesFireUnderBpftrace) {
  SKIP_WITHOUT_KVM();
  if (!KVMSCALE_PROBES) GTEST_SKIP() << "built without <sys/sdt.h>: probes compiled out";
  const std::string bpftrace = which("bpftrace");
  if (bpftrace.empty())
    GTEST_SKIP() << "bpftrace is not installed (Debian: bpftrace); probe firing not checked";
  const std::string bin = KVMSCALE_BIN;
  // Where even a plain uprobe cannot attach (no root, no BPF, a kernel without uprobes), the
  // probes cannot be watched; anything else failing below is a failure.
  auto can =
      spawn({bpftrace, "-e", "uprobe:" + bin + ":main { @ = count(); }", "-c", bin + " --help"}, 0,
            60000);
  if (can.exit_code != 0)
    GTEST_SKIP() << "bpftrace cannot attach a uprobe here (needs root, BPF and uprobes): "
                 << can.err;
  const std::string program =
      "usdt:" + bin + ":kvmscale:vm_boot_done { @boot[arg0] = count(); }\n" + "usdt:" + bin +
      ":kvmscale:lock_acquire /str(arg0) == \"runq\"/ { @acquire = count(); }\n" + "usdt:" + bin +
      ":kvmscale:lock_release /str(arg0) == \"runq\"/ { @release = count(); }\n";
  const fs::path record =
      fs::temp_directory_path() / ("kvmscale-probes-" + std::to_string(getpid()) + ".json");
  const std::string cmd = bin + " run --sched credit --pcpus 1 --guest hello --vms 2 --vcpus 1" +
                          " --mem 8M --duration 20s --lock-profile off";
  auto r = spawn({bpftrace, "-e", program, "-c", cmd + " --out " + record.string()}, 0, 120000);
  fs::remove(record);
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  auto maps = bpftrace_maps(r.out);
  EXPECT_EQ(maps["@boot[0]"], 1) << r.out;
  EXPECT_EQ(maps["@boot[1]"], 1) << r.out;
  EXPECT_GT(maps["@acquire"], 0) << r.out;
  EXPECT_GT(maps["@release"], 0) << "lock_release needs its semaphore-gated hold clock\n" << r.out;
}
