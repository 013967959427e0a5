// Names and values from outside (files, records, flags, gnuplot's messages about them) on the
// terminal: control bytes and broken UTF-8 are shown as \xNN, never passed raw.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "app/cli.hpp"
#include "app/record.hpp"
#include "app/text.hpp"
#include "study/matrix.hpp"
#include "study/plots.hpp"
#include "study/study_cli.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace kvmscale::study;
using nlohmann::json;

namespace {

struct TempDir : kvmscale::test::TempDir {
  TempDir() : kvmscale::test::TempDir("kvmscale-printable") {}
};

using kvmscale::test::slurp;

// cli_main as the binary runs it, with stdout and stderr captured.
struct CliRun {
  int rc;
  std::string out, err;
};
CliRun cli(std::vector<std::string> args) {
  args.insert(args.begin(), "kvmscale");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::ostringstream out, err;
  auto* old_out = std::cout.rdbuf(out.rdbuf());
  auto* old_err = std::cerr.rdbuf(err.rdbuf());
  auto study = study_subcommands();
  int rc = kvmscale::app::cli_main(int(argv.size()), argv.data(), {study.get()});
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);
  return {rc, out.str(), err.str()};
}

bool has_control_bytes(const std::string& s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\n') || c == 0x7f || c == 0x9b) return true;
  return false;
}

json record_of(double boot_ms, const json& guest_metrics = json::object()) {
  kvmscale::app::RunConfig cfg;
  return {{"schema_version", kvmscale::app::kRecordSchemaVersion},
          {"config", cfg.to_json()},
          {"host", {{"hostname", "node1"}, {"backend", "VMX"}}},
          {"run", {{"exec_ns", 1000000000}, {"interrupted", false}}},
          {"summary",
           {{"vms", 1},
            {"vms_booted", 1},
            {"vms_crashed", 0},
            {"exits_total", 10},
            {"boot_ns", {{"p50", boot_ms * 1e6}, {"max", boot_ms * 1e6}}}}},
          {"vms", json::array({{{"metrics", guest_metrics}}})}};
}

}  // namespace

TEST(Printable, ControlBytesAndBrokenUtf8AreEscapedPrintableUtf8Stays) {
  using kvmscale::app::printable;
  EXPECT_EQ(printable("\x1b[31mred"), "\\x1b[31mred");
  EXPECT_EQ(printable("a\nb\tc\rd\x07\x7f"), "a\\x0ab\\x09c\\x0dd\\x07\\x7f");
  EXPECT_EQ(printable("a\nb\tc", true), "a\nb\tc") << "messages keep their lines";
  EXPECT_EQ(printable("\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(printable("\xc2\x9b"
                      "2J"),
            "\\xc2\\x9b2J")
      << "C1 CSI as UTF-8";
  EXPECT_EQ(printable("\x9b"
                      "2J"),
            "\\x9b2J")
      << "a lone 8-bit CSI";
  EXPECT_EQ(printable("\xff\xc3"), "\\xff\\xc3") << "invalid and truncated UTF-8";
  EXPECT_EQ(printable("\xc0\xaf\xed\xa0\x80"), "\\xc0\\xaf\\xed\\xa0\\x80")
      << "overlong, surrogate";
  EXPECT_EQ(printable(std::string("a\0b", 3)), "a\\x00b");
}

// compare names the files it skips and prints the metric names of records: neither reaches the
// terminal raw, on stderr or stdout.
TEST(Printable, CompareShowsHostileFileAndMetricNamesEscaped) {
  TempDir t;
  for (const char* side : {"a", "b"}) {
    fs::create_directories(t.sub(side));
    kvmscale::app::write_file_atomically(t.sub(side) + "/run.json",
                                         record_of(10, {{"\x1b]0;pwned\x07it\x1b[2J", 5}}).dump());
  }
  std::ofstream(t.sub("b/\x1b[31mevil\x9b.json")) << "not json";
  CliRun r = cli({"compare", t.sub("a"), t.sub("b")});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("compare: skipped"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\\x1b[31mevil\\x9b.json"), std::string::npos) << r.err;
  EXPECT_FALSE(has_control_bytes(r.err)) << r.err;
  EXPECT_NE(r.out.find("\\x1b]0;pwned\\x07it\\x1b[2J"), std::string::npos) << r.out;
  EXPECT_FALSE(has_control_bytes(r.out)) << r.out;
  // --json is JSON: its own escapes, and bytes that are not UTF-8 do not end the command.
  fs::rename(t.sub("b"), t.sub("b-\xff"));
  r = cli({"compare", "--json", t.sub("a"), t.sub("b-\xff")});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(has_control_bytes(r.out)) << r.out;
  EXPECT_FALSE(json::parse(r.out, nullptr, false).is_discarded()) << r.out;
}

// Errors quoting a flag or a path the user gave are escaped too.
TEST(Printable, ErrorsNamingAFlagOrPathAreEscaped) {
  CliRun r = cli({"\x1b[2Jnosuchcmd"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("\\x1b[2Jnosuchcmd"), std::string::npos) << r.err;
  EXPECT_FALSE(has_control_bytes(r.err)) << r.err;
  r = cli({"compare", "/nonexistent/\x1b]0;x\x07", "/nonexistent/b"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("\\x1b]0;x\\x07"), std::string::npos) << r.err;
  EXPECT_FALSE(has_control_bytes(r.err)) << r.err;
}

// gnuplot's own messages quote the script, values and all: they never reach the terminal raw
// (kvmscale's stderr); the last one is in the warning, which is printed like every message.
TEST(Printable, GnuplotsMessagesDoNotReachTheTerminalRaw) {
  TempDir t;
  fs::create_directories(t.sub("bin"));
  std::ofstream(t.sub("bin/gnuplot"))
      << "#!/bin/sh\nprintf 'line 3: \\033]0;pwned\\007 bad\\n' >&2\n"
         "exit 1\n";
  fs::permissions(t.sub("bin/gnuplot"), fs::perms::owner_all);
  const std::string saved_path = getenv("PATH") ? getenv("PATH") : "";
  setenv("PATH", (t.sub("bin") + ":" + saved_path).c_str(), 1);
  MatrixSpec spec;
  spec.axes.push_back({"vms", {"1", "2"}});
  // The test's own stderr, as the terminal kvmscale's children would write to.
  fflush(stderr);
  const int saved_fd = dup(2);
  const int file = open(t.sub("stderr").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(file, 2);
  auto warnings =
      write_plots(spec, {{"a", {{"vms", "1"}}, 0, {{"boot_max_ms", 1}}, ""}}, t.sub("plots"));
  dup2(saved_fd, 2);
  close(saved_fd);
  close(file);
  setenv("PATH", saved_path.c_str(), 1);
  EXPECT_EQ(slurp(t.sub("stderr")), "");
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(warnings[0].find("gnuplot failed"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("line 3: \x1b]0;pwned\x07 bad"), std::string::npos) << warnings[0];
}
