// Values from flags, files and records in the files kvmscale generates (gnuplot scripts and data,
// CSV, sbatch scripts): whatever bytes a value holds, it stays one value and nothing in it runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/record.hpp"
#include "study/matrix.hpp"
#include "study/plots.hpp"
#include "study/slurm.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace kvmscale::study;
using kvmscale::app::ConfigError;
using nlohmann::json;

namespace {

struct TempDir : kvmscale::test::TempDir {
  TempDir() : kvmscale::test::TempDir("kvmscale-hostile") {}
};

using kvmscale::test::slurp;

// Values a careless or hostile user could put in an axis, a path or a record: each that could
// run a command touches `marker` + its index, and comes first (gnuplot stops at the first error
// in a script). NUL-free, otherwise any bytes.
std::vector<std::string> hostile_values(const std::string& marker) {
  std::vector<std::string> v;
  for (const char* form : {"`touch %`", "$(touch %)", "\\`touch %`", "'`touch %`'", "\"`touch %`\"",
                           "x\n`touch %`", "'.`touch %`.'", "\\\n`touch %`"}) {
    std::string s = form;
    s.replace(s.find('%'), 1, marker + std::to_string(v.size()));
    v.push_back(s);
  }
  for (const char* s :
       {"a\"b", "it's", "back\\slash\\", "new\nline", "cr\rlf\r\n", "#hash", "semi;colon",
        "comma,value", "tab\there", "\x1b[31mred\x1b[0m", "@macro", "\xff\xfe\x80 bytes",
        "  spaces  ", "\xc3\xa9 \xc3\xbc", "ends with \\", "", "*"})
    v.push_back(s);
  return v;
}

// A command from a value touched a marker file (the markers are directly in `dir`).
bool any_marker(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename().string().rfind("marker", 0) == 0) return true;
  return false;
}

// Rows for every cell of `spec`, each with one plotted metric.
std::vector<RunRow> rows_of(const MatrixSpec& spec) {
  std::vector<RunRow> rows;
  double v = 1;
  for (const Cell& c : expand(spec))
    rows.push_back({c.id, c.values, c.rep, {{"boot_max_ms", v++}}, ""});
  return rows;
}

bool gnuplot_installed() {
  return kvmscale::study::run_program({"sh", "-c", "command -v gnuplot"}).status == 0;
}

size_t count_lines(const std::string& s) { return size_t(std::count(s.begin(), s.end(), '\n')); }

// A data line gnuplot reads: blank, a comment without control bytes, or numbers (or '?').
void expect_data_structure(const std::string& dat, size_t fields) {
  std::istringstream in(dat);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      for (unsigned char c : line) EXPECT_GE(c, 0x20) << "control byte in a comment: " << line;
      continue;
    }
    std::istringstream words(line);
    std::string w;
    size_t n = 0;
    for (; words >> w; n++) {
      char* end = nullptr;
      std::strtod(w.c_str(), &end);
      EXPECT_TRUE(w == "?" || *end == '\0') << "not a number: '" << w << "' in " << line;
    }
    EXPECT_EQ(n, fields) << line;
  }
}

// An RFC 4180 reader: quoted fields may hold commas, quotes ("") and line breaks; an unquoted
// CR or LF ends the record.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows(1, std::vector<std::string>(1));
  bool quoted = false, at_start = true;
  for (size_t i = 0; i < text.size(); i++) {
    char c = text[i];
    std::string& f = rows.back().back();
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"')
        f += '"', i++;
      else if (c == '"')
        quoted = false;
      else
        f += c;
    } else if (c == '"' && at_start) {
      quoted = true;
    } else if (c == ',') {
      rows.back().emplace_back();
      at_start = true;
      continue;
    } else if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') i++;
      rows.emplace_back(1);
    } else {
      f += c;
    }
    at_start = c == '\n' || c == '\r';
  }
  if (rows.back().size() == 1 && rows.back()[0].empty()) rows.pop_back();
  return rows;
}

}  // namespace

// ---- gnuplot ----

// The string gnuplot reads back from gnuplot_string(v) is v, and reading it runs nothing.
TEST(GnuplotString, EveryValueReadsBackAsItselfAndRunsNothing) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed";
  TempDir t;
  const auto values = hostile_values(t.sub("marker"));
  std::string gp = "set print " + gnuplot_string(t.sub("out")) + "\n";
  for (const auto& v : values) gp += "print " + gnuplot_string(v) + "\n";
  std::ofstream(t.sub("read.gp")) << gp;
  ProgramResult r = run_program({"gnuplot", t.sub("read.gp")});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(any_marker(t.path.string())) << "gnuplot ran a command from a value";
  EXPECT_EQ(count_lines(gp), values.size() + 1) << "one command per line";
  std::string expected;
  for (const auto& v : values) expected += v + "\n";
  EXPECT_EQ(slurp(t.sub("out")), expected);
}

// Hostile axis values (categorical and as series of a numeric axis) and a hostile plot
// directory: gnuplot renders, runs nothing (neither from kvmscale nor by hand from another
// directory), the script has the lines of a harmless matrix of the same shape, and the data
// files hold numbers only.
TEST(GnuplotPlots, HostileValuesAndPathsRunNothingAndKeepTheStructure) {
  TempDir t;
  const auto values = hostile_values(t.sub("marker"));
  std::vector<std::string> plain;
  for (size_t i = 0; i < values.size(); i++) plain.push_back("v" + std::to_string(i));
  const std::string hostile_dir = t.sub("out `touch " + t.sub("marker-dir") + "` $(touch " +
                                        t.sub("marker-dir2") + ") '\"\\\n\x1b[2J");
  for (bool numeric_x : {false, true}) {
    SCOPED_TRACE(numeric_x ? "numeric x" : "categorical x");
    auto spec_of = [&](const std::vector<std::string>& v) {
      MatrixSpec s;
      if (numeric_x) s.axes.push_back({"vms", {"1", "2"}});
      s.axes.push_back({"guest", v});
      s.axes.push_back({"lock", {v[0], v.back()}});
      return s;
    };
    const std::string dir = hostile_dir + (numeric_x ? "n" : "c");
    auto warnings = write_plots(spec_of(values), rows_of(spec_of(values)), dir);
    write_plots(spec_of(plain), rows_of(spec_of(plain)), t.sub(numeric_x ? "plain-n" : "plain-c"));
    const std::string gp = slurp(dir + "/boot_max_ms.gp");
    const std::string plain_gp =
        slurp(t.sub(numeric_x ? "plain-n" : "plain-c") + "/boot_max_ms.gp");
    ASSERT_FALSE(gp.empty());
    EXPECT_EQ(count_lines(gp), count_lines(plain_gp)) << gp;
    expect_data_structure(slurp(dir + "/boot_max_ms.dat"), 5);
    EXPECT_FALSE(any_marker(t.path.string())) << "gnuplot ran a command from a value:\n" << gp;
    if (!gnuplot_installed()) continue;
    EXPECT_TRUE(warnings.empty()) << warnings[0];
    EXPECT_TRUE(fs::exists(dir + "/boot_max_ms.png"));
    // By hand, as the script's first line suggests, from another directory.
    ProgramResult r = run_program({"sh", "-c", "cd / && gnuplot \"$0\"", dir + "/boot_max_ms.gp"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_FALSE(any_marker(t.path.string())) << "gnuplot ran a command from a value:\n" << gp;
  }
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed: structure checked only";
}

// A metric name from a record is a file name of the plots: one that is not plain is left out
// with a warning naming it, and nothing is written outside the plot directory.
TEST(GnuplotPlots, AMetricNameThatIsNoPlainFileNameIsNotPlotted) {
  TempDir t;
  MatrixSpec spec;
  spec.axes.push_back({"vms", {"1", "2"}});
  auto rows = rows_of(spec);
  for (auto& r : rows)
    r.metrics["guest_x/../../escaped_per_s"] = 1, r.metrics["guest_ok_per_s"] = 2;
  auto warnings = write_plots(spec, rows, t.sub("a/plots"));
  EXPECT_FALSE(fs::exists(t.sub("escaped_per_s.dat")));
  EXPECT_FALSE(fs::exists(t.sub("a/escaped_per_s.dat")));
  EXPECT_TRUE(fs::exists(t.sub("a/plots/guest_ok_per_s.dat")));
  bool named = false;
  for (const auto& w : warnings)
    named = named || w.find("guest_x/../../escaped_per_s") != std::string::npos;
  EXPECT_TRUE(named) << (warnings.empty() ? "no warning" : warnings[0]);
}

// ---- CSV ----

TEST(SummaryCsv, EveryValueIsOneFieldThatReadsBackAsItself) {
  TempDir t;
  const auto values = hostile_values(t.sub("marker"));
  MatrixSpec spec;
  spec.axes.push_back({"guest", values});
  spec.axes.push_back({"lock", {"a,b", "c\rd"}});
  auto rows = rows_of(spec);
  for (size_t i = 0; i < rows.size(); i++) {
    rows[i].record_file = "cells/" + values[i % values.size()] + ".json";
    rows[i].metrics["guest_a,b\"c\r\nd_per_s"] = double(i);
  }
  auto csv = parse_csv(summary_csv(spec, rows));
  ASSERT_EQ(csv.size(), rows.size() + 1);
  const std::vector<std::string> header = {
      "id", "rep", "guest", "lock", "boot_max_ms", "guest_a,b\"c\r\nd_per_s", "record"};
  EXPECT_EQ(csv[0], header);
  for (size_t i = 0; i < rows.size(); i++) {
    ASSERT_EQ(csv[i + 1].size(), header.size()) << "row " << i;
    EXPECT_EQ(csv[i + 1][0], rows[i].id);
    EXPECT_EQ(csv[i + 1][2], rows[i].values.at("guest"));
    EXPECT_EQ(csv[i + 1][3], rows[i].values.at("lock"));
    EXPECT_EQ(csv[i + 1][6], rows[i].record_file);
  }
}

// ---- sbatch ----

// Each task passes its cell id, whatever bytes it holds, as one argument; nothing in it runs.
TEST(SbatchScript, HostileCellIdsStayOneArgumentAndRunNothing) {
  TempDir t;
  const auto ids = hostile_values(t.sub("marker"));
  const std::string fake = t.sub("fake-kvmscale");
  std::ofstream(fake) << "#!/bin/bash\nprintf '%s\\0' \"$@\"\n";
  fs::permissions(fake, fs::perms::owner_all);
  const std::string script = t.sub("job.sbatch");
  std::ofstream(script) << sbatch_script(t.path.string(), fake, ids, "00000000deadbeef", {});
  for (size_t task = 0; task < ids.size(); task++) {
    ProgramResult r =
        run_program({"env", "SLURM_ARRAY_TASK_ID=" + std::to_string(task), "bash", script});
    ASSERT_EQ(r.status, 0) << r.err;
    std::vector<std::string> args;
    for (size_t p = 0, q; (q = r.out.find('\0', p)) != std::string::npos; p = q + 1)
      args.push_back(r.out.substr(p, q - p));
    const std::vector<std::string> expected = {
        "matrix",        "--cell",          ids[task],         "--out",
        t.path.string(), "--matrix-digest", "00000000deadbeef"};
    EXPECT_EQ(args, expected) << "task " << task;
  }
  EXPECT_FALSE(any_marker(t.path.string()));
}

// sbatch splits #SBATCH lines at any blank (isspace: also \v, \f, \r): a path with a control
// byte would not stay one value there, so it is refused, as blanks are.
TEST(SbatchScript, ControlBytesInPathsAndOptionsAreRefused) {
  for (const char* bad : {"/d\rx", "/d\vx", "/d\fx", "/d\x1b[2Jx", "/d\x7fx"}) {
    EXPECT_THROW(sbatch_script(bad, "/k", {"a"}, "d", {}), ConfigError) << bad;
    EXPECT_THROW(sbatch_script("/d", bad, {"a"}, "d", {}), ConfigError) << bad;
  }
  EXPECT_THROW(sbatch_script("/d", "/k", {"a"}, "d", {{"--comment=a\x1b[2J"}, 0}), ConfigError);
  EXPECT_THROW(sbatch_script("/d", "/k", {"a"}, "d", {{"--comment=a\vb"}, 0}), ConfigError);
}
