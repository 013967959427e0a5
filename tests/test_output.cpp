// Every command checks what it writes (issue 25 items 9 and 11): a full or closed stdout is an
// error (exit 1, said on stderr), a reader that went away ends a command quietly, bench-locks'
// files are refused as run's --out is, and a thread bench-locks cannot start ends it with exit 1.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "vmm/clock.hpp"

using namespace kvmscale;
namespace fs = std::filesystem;

namespace {

struct Ran {
  int exit_code = -1;  // 128 + signal when killed by one
  std::string err;
};

// Runs kvmscale with stdout on `out_fd` (-1: closed) and an address-space limit (0: none);
// collects its stderr. Killed after 120 s.
Ran run_with_stdout(const std::vector<std::string>& args, int out_fd, rlim_t as_limit = 0) {
  int err[2];
  if (pipe2(err, O_CLOEXEC) != 0) return {};
  std::vector<std::string> argv = {KVMSCALE_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargs;
  for (auto& a : argv) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    if (out_fd >= 0)
      dup2(out_fd, 1);
    else
      close(1);
    dup2(err[1], 2);
    signal(SIGPIPE, SIG_DFL);  // as from a shell
    if (as_limit) {
      rlimit r{as_limit, as_limit};
      setrlimit(RLIMIT_AS, &r);
    }
    execv(cargs[0], cargs.data());
    _exit(127);
  }
  close(err[1]);
  Ran r;
  const uint64_t deadline = now_ns() + 120'000'000'000ull;
  for (;;) {
    if (now_ns() > deadline) {
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{err[0], POLLIN, 0};
    poll(&p, 1, 100);
    if (!(p.revents & (POLLIN | POLLHUP))) continue;
    char buf[4096];
    const ssize_t n = read(err[0], buf, sizeof buf);
    if (n <= 0) break;
    r.err.append(buf, size_t(n));
  }
  close(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

const std::string kRecord = KVMSCALE_SOURCE_DIR "/tests/fuzz/corpus/record/valid-nopod.json";

// The commands that print their result on stdout; none needs /dev/kvm.
std::vector<std::vector<std::string>> printing_commands() {
  return {{"info"},
          {"info", "--json"},
          {"--help"},
          {"run", "--help"},
          {"matrix", "--vms", "1,2", "--dry-run"},
          {"compare", kRecord, kRecord},
          {"compare", "--json", kRecord, kRecord},
          {"bench-locks", "--quick", "--locks", "ticket", "--threads", "1"}};
}

std::string joined(const std::vector<std::string>& args) {
  std::string s;
  for (const auto& a : args) s += " " + a;
  return s;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

TEST(Output, AFullStdoutExitsOneAndSaysSo) {
  const int full = open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(full, 0);
  for (const auto& args : printing_commands()) {
    Ran r = run_with_stdout(args, full);
    EXPECT_EQ(r.exit_code, 1) << joined(args) << ": " << r.err;
    EXPECT_NE(r.err.find("output to stdout is incomplete: No space left on device"),
              std::string::npos)
        << joined(args) << ": " << r.err;
  }
  close(full);
}

TEST(Output, AClosedStdoutExitsOneAndSaysSo) {
  for (const auto& args : printing_commands()) {
    Ran r = run_with_stdout(args, -1);
    EXPECT_EQ(r.exit_code, 1) << joined(args) << ": " << r.err;
    EXPECT_NE(r.err.find("stdout is closed"), std::string::npos) << joined(args) << ": " << r.err;
  }
}

// `kvmscale bench-locks --csv F | head -1`: the reader going away neither kills the command
// before it wrote its file nor is reported as an error; the exit status says the output is
// incomplete.
TEST(Output, AReaderThatWentAwayEndsTheCommandQuietly) {
  test::TempDir t("kvmscale-output");
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  close(p[0]);  // no reader
  for (const auto& args : printing_commands()) {
    Ran r = run_with_stdout(args, p[1]);
    EXPECT_EQ(r.exit_code, 1) << joined(args) << ": " << r.err;
    EXPECT_EQ(r.err, "") << joined(args);
  }
  const fs::path csv = t.sub("locks.csv");
  Ran r = run_with_stdout(
      {"bench-locks", "--quick", "--locks", "ticket", "--threads", "1", "--csv", csv.string()},
      p[1]);
  close(p[1]);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(read_file(csv).rfind("test,lock,threads", 0), 0u) << "the CSV was not written";
}

// --json/--csv as run's --out: an existing file only with --force, never a symlink, never the
// same file twice; all refused (exit 2) before the benchmark runs.
TEST(Output, BenchLocksFilesAreCheckedBeforeItRuns) {
  test::TempDir t("kvmscale-output");
  const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  const std::vector<std::string> quick = {"bench-locks", "--quick",   "--locks",
                                          "ticket",      "--threads", "1"};
  auto bench = [&](std::vector<std::string> more) {
    std::vector<std::string> args = quick;
    args.insert(args.end(), more.begin(), more.end());
    return run_with_stdout(args, devnull);
  };
  const std::string old = t.sub("old.csv"), target = t.sub("target.csv"), link = t.sub("link.csv"),
                    fresh = t.sub("fresh.json");
  std::ofstream(old) << "keep me\n";
  std::ofstream(target) << "target\n";
  fs::create_symlink(target, link);
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"--csv", old}, "--csv " + old + " exists; use --force"},
      {{"--json", old}, "--json " + old + " exists; use --force"},
      {{"--csv", link}, "is not a regular file (a symbolic link)"},
      {{"--csv", link, "--force"}, "is not a regular file (a symbolic link)"},
      {{"--json", fresh, "--csv", fresh}, "--json and --csv name the same file"},
      {{"--json", fresh, "--csv", t.sub(".") + "/fresh.json"}, "name the same file"},
  };
  for (const Case& c : cases) {
    Ran r = bench(c.args);
    EXPECT_EQ(r.exit_code, 2) << joined(c.args) << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << joined(c.args) << ": " << r.err;
  }
  EXPECT_EQ(read_file(old), "keep me\n");
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(read_file(target), "target\n");
  EXPECT_FALSE(fs::exists(fresh));
  Ran r = bench({"--csv", old, "--force"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_file(old).rfind("test,lock,threads", 0), 0u) << "--force replaces the file";
  close(devnull);
}

// Under `ulimit -v 100000` 64 threads' stacks do not fit: bench-locks used to abort in
// std::thread ("terminate called without an active exception").
TEST(Output, BenchLocksThatCannotStartAThreadExitsOneNamingTheLimit) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizers reserve more address space than the limit";
#endif
  const int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  Ran r = run_with_stdout({"bench-locks", "--quick", "--locks", "ticket", "--threads", "64"},
                          devnull, 100000ull * 1024);
  close(devnull);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("cannot start bench-locks thread"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ulimit -v"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("fewer --threads"), std::string::npos) << r.err;
}
