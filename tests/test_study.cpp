// The study tools without KVM: axis parsing, matrix expansion, resume, CSV and plots from canned
// records, and the statistics on data with known answers.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <set>
#include <sstream>

#include "app/cli.hpp"
#include "app/record.hpp"
#include "app/testbed.hpp"
#include "study/compare.hpp"
#include "study/matrix.hpp"
#include "study/metrics.hpp"
#include "study/plots.hpp"
#include "study/scenario.hpp"
#include "study/stats.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace kvmscale::study;
using kvmscale::app::ConfigError;
using nlohmann::json;

namespace {

// Each test's scratch directory (tests/temp_dir.hpp).
struct TempDir : kvmscale::test::TempDir {
  TempDir() : kvmscale::test::TempDir("kvmscale-study") {}
};

// A record as the testbed writes it, reduced to what the metrics read.
json canned_record(double boot_ms, double iterations, bool interrupted = false) {
  return {{"schema_version", 1},
          {"config", json::object()},
          {"run", {{"exec_ns", 2000000000}, {"interrupted", interrupted}}},
          {"summary",
           {{"vms", 1},
            {"vms_booted", 1},
            {"vms_crashed", 0},
            {"exits_total", 10},
            {"boot_ns", {{"p50", boot_ms * 1e6}, {"max", boot_ms * 1e6}}}}},
          {"locks",
           {{"classes",
             {{"call",
               {{"acquisitions", 4},
                {"contended", 1},
                {"wait_ns", 3000000},
                {"wait_max_ns", 2000}}}}}}},
          {"vms", json::array({{{"metrics", {{"iterations", iterations}}}}})}};
}

// Boot time grows with --vms; --lock mcs halves it: a fake testbed with known answers.
json fake_run(const kvmscale::app::RunConfig& cfg) {
  double boot = 10.0 * cfg.vms * (cfg.lock == "mcs" ? 0.5 : 1.0);
  json r = canned_record(boot, 1000.0 * cfg.vms);
  r["config"] = cfg.to_json();  // as make_run_record does
  return r;
}

MatrixSpec two_by_two(uint32_t repeat = 2) {
  return make_spec({{"vms", "1,2"}, {"lock", "ticket,mcs"}, {"guest", "spin"}}, repeat, 7);
}

}  // namespace

TEST(MatrixAxes, CommasSplitExceptWhereAValueHoldsThem) {
  EXPECT_EQ(split_axis("vms", "1,2,4"), (std::vector<std::string>{"1", "2", "4"}));
  EXPECT_EQ(split_axis("lock", "call=mcs,runq=ticket"),
            (std::vector<std::string>{"call=mcs,runq=ticket"}));
  EXPECT_EQ(split_axis("lock", "call=mcs,runq=ticket;ticket"),
            (std::vector<std::string>{"call=mcs,runq=ticket", "ticket"}));
  EXPECT_EQ(split_axis("vcpu-pin", "0,1"), (std::vector<std::string>{"0,1"}));
  EXPECT_EQ(split_axis("vcpu-pin", "none,1:1"), (std::vector<std::string>{"none", "1:1"}));
  EXPECT_EQ(split_axis("guest-arg", "0,8"), (std::vector<std::string>{"0,8"}));
}

TEST(MatrixAxes, BadListsAreRejected) {
  EXPECT_THROW(make_spec({{"vms", "1,1"}}, 1, 0), ConfigError);
  EXPECT_THROW(make_spec({{"vms", "1,,2"}}, 1, 0), ConfigError);
  EXPECT_THROW(make_spec({{"vms", "1"}, {"vms", "2"}}, 1, 0), ConfigError);
  EXPECT_THROW(make_spec({{"vms", "1"}}, 0, 0), ConfigError);
}

TEST(MatrixExpansion, CartesianProductTimesRepeatWithUniqueIds) {
  MatrixSpec s = make_spec({{"vms", "1,2,4"},
                            {"vcpu-pin", "none,1:1"},
                            {"sched", "credit"},
                            {"balance", "xen,affinity,hybrid"}},
                           3, 1);
  ASSERT_EQ(s.axes.size(), 3u);
  ASSERT_EQ(s.fixed.size(), 1u);
  auto cells = expand(s);
  ASSERT_EQ(cells.size(), 3u * 2 * 3 * 3);
  std::set<std::string> ids;
  for (const auto& c : cells) ids.insert(c.id);
  EXPECT_EQ(ids.size(), cells.size());
  EXPECT_EQ(cells[0].id, "vms-1_vcpu-pin-none_balance-xen_r0");
  EXPECT_EQ(cells[1].rep, 1u);  // repetitions innermost
  EXPECT_EQ(cells.back().values.at("vms"), "4");
  EXPECT_EQ(cells.back().values.at("balance"), "hybrid");
  std::vector<std::string> args = cell_args(s, cells[3]);
  EXPECT_EQ(args, (std::vector<std::string>{"--sched", "credit", "--vms", "1", "--vcpu-pin", "none",
                                            "--balance", "affinity"}));
  // Every cell parses as a `run` command line.
  for (const auto& c : cells) EXPECT_NO_THROW(kvmscale::app::parse_run_args(cell_args(s, c)));
}

TEST(MatrixExpansion, RunOrderIsASeededPermutation) {
  auto a = run_order(50, 3), b = run_order(50, 3), c = run_order(50, 4);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<size_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); i++) EXPECT_EQ(sorted[i], i);
  EXPECT_NE(a, sorted);  // actually shuffled
}

TEST(MatrixRun, WritesEveryRunThenCsvAndResumesAfterAnInterrupt) {
  TempDir t;
  MatrixSpec spec = two_by_two();
  MatrixOptions opt{t.sub("m"), false, false};
  std::ostringstream log;
  int calls = 0;
  auto run = [&](const kvmscale::app::RunConfig& c) {
    calls++;
    return fake_run(c);
  };
  // Stop after three runs: those stay, nothing else is written.
  auto stop_after_3 = [&] { return calls >= 3; };
  MatrixOutcome o = run_matrix(spec, opt, kvmscale::app::parse_run_args, run, stop_after_3, log);
  EXPECT_TRUE(o.interrupted);
  EXPECT_EQ(o.ran, 3u);
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(t.sub("m/cells"))) files += e.is_regular_file();
  EXPECT_EQ(files, 3u);
  EXPECT_NE(log.str().find("[3/8]"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("ETA"), std::string::npos);

  // Without --resume the directory is refused; with a different spec too.
  EXPECT_THROW(run_matrix(spec, opt, kvmscale::app::parse_run_args, run, nullptr, log),
               ConfigError);
  MatrixOptions resume = opt;
  resume.resume = true;
  EXPECT_THROW(run_matrix(two_by_two(3), resume, kvmscale::app::parse_run_args, run, nullptr, log),
               ConfigError);
  // Resume runs exactly the five missing ones (the seed may differ: the stored one is used).
  spec.seed = 99;
  calls = 0;
  o = run_matrix(spec, resume, kvmscale::app::parse_run_args, run, nullptr, log);
  EXPECT_FALSE(o.interrupted);
  EXPECT_EQ(calls, 5);
  EXPECT_EQ(o.skipped, 3u);
  EXPECT_EQ(o.total, 8u);

  std::vector<RunRow> rows = load_rows(spec, opt.dir);
  ASSERT_EQ(rows.size(), 8u);
  std::ifstream csv(t.sub("m/summary.csv"));
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header.rfind("id,rep,vms,lock,boot_p50_ms,boot_max_ms,", 0), 0u) << header;
  EXPECT_NE(header.find("guest_iterations_per_s"), std::string::npos);
  int n = 0;
  bool saw_known = false;
  while (std::getline(csv, line)) {
    n++;
    // vms=2, mcs: boot 10 ms; iterations 2000 over 2 s.
    if (line.rfind("vms-2_lock-mcs_r1,1,2,mcs,10,10,", 0) == 0) {
      saw_known = true;
      EXPECT_NE(line.find(",1000,cells/vms-2_lock-mcs_r1.json"), std::string::npos) << line;
    }
  }
  EXPECT_EQ(n, 8);
  EXPECT_TRUE(saw_known);
}

TEST(MatrixRun, AnInvalidCellStopsTheMatrixBeforeAnyRun) {
  TempDir t;
  MatrixSpec spec = make_spec({{"vms", "1,0"}, {"guest", "spin"}}, 1, 1);
  int calls = 0;
  std::ostringstream log;
  EXPECT_THROW(run_matrix(
                   spec, {t.sub("m"), false, false}, kvmscale::app::parse_run_args,
                   [&](const kvmscale::app::RunConfig& c) {
                     calls++;
                     return fake_run(c);
                   },
                   nullptr, log),
               ConfigError);
  EXPECT_EQ(calls, 0);
  EXPECT_FALSE(fs::exists(t.sub("m/matrix.json")));
}

TEST(MatrixRun, AFailedRunIsReportedAndRetriedOnResume) {
  TempDir t;
  MatrixSpec spec = make_spec({{"vms", "1,2"}}, 1, 1);
  std::ostringstream log;
  auto failing = [](const kvmscale::app::RunConfig& c) -> json {
    if (c.vms == 2) throw kvmscale::app::RunError("no room for 2 VMs");
    return fake_run(c);
  };
  MatrixOptions opt{t.sub("m"), false, false};
  MatrixOutcome o = run_matrix(spec, opt, kvmscale::app::parse_run_args, failing, nullptr, log);
  EXPECT_EQ(o.ran, 1u);
  EXPECT_EQ(o.failed, 1u);
  EXPECT_TRUE(fs::exists(t.sub("m/failed/vms-2_r0.txt")));
  opt.resume = true;
  o = run_matrix(spec, opt, kvmscale::app::parse_run_args, fake_run, nullptr, log);
  EXPECT_EQ(o.ran, 1u);
  EXPECT_EQ(o.failed, 0u);
  EXPECT_FALSE(fs::exists(t.sub("m/failed/vms-2_r0.txt")));
}

TEST(MatrixRun, AnInterruptedRunIsNotKept) {
  TempDir t;
  MatrixSpec spec = make_spec({{"vms", "1,2"}}, 1, 1);
  std::ostringstream log;
  MatrixOutcome o = run_matrix(
      spec, {t.sub("m"), false, false}, kvmscale::app::parse_run_args,
      [](const kvmscale::app::RunConfig&) { return canned_record(1, 1, true); }, nullptr, log);
  EXPECT_TRUE(o.interrupted);
  EXPECT_EQ(o.ran, 0u);
  EXPECT_TRUE(load_rows(spec, t.sub("m")).empty());
}

TEST(MatrixPlots, DataFilesHoldMediansAndGnuplotRendersPngAndSvg) {
  TempDir t;
  MatrixSpec spec = two_by_two(3);
  std::vector<RunRow> rows;
  for (const Cell& c : expand(spec)) {
    json r = canned_record(10.0 * std::stoi(c.values.at("vms")) + c.rep, 100);
    rows.push_back({c.id, c.values, c.rep, run_metrics(r), ""});
  }
  auto warnings = write_plots(spec, rows, t.sub("plots"));
  std::ifstream dat(t.sub("plots/boot_max_ms.dat"));
  ASSERT_TRUE(dat.good());
  std::stringstream ss;
  ss << dat.rdbuf();
  // Series "lock=ticket", x = vms: medians of {10,11,12} and {20,21,22}, min, max and runs.
  EXPECT_NE(ss.str().find("# lock=ticket\n1 11 10 12 3\n2 21 20 22 3\n"), std::string::npos)
      << ss.str();
  EXPECT_TRUE(fs::exists(t.sub("plots/boot_max_ms.gp")));
  EXPECT_FALSE(fs::exists(t.sub("plots/balance_trylocks.dat")));  // no such metric: no plot
  if (!warnings.empty() && warnings[0].find("not found") != std::string::npos)
    GTEST_SKIP() << "gnuplot is not installed: " << warnings[0];
  EXPECT_TRUE(warnings.empty()) << warnings[0];
  for (const char* f : {"boot_max_ms.png", "boot_max_ms.svg", "call_lock_wait_ms.png",
                        "guest_iterations_per_s.png"}) {
    EXPECT_TRUE(fs::exists(t.sub("plots/") + f)) << f;
    EXPECT_GT(fs::file_size(t.sub("plots/") + f), 1000u) << f;
  }
  std::ifstream png(t.sub("plots/boot_max_ms.png"), std::ios::binary);
  char magic[4] = {};
  png.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
}

// A categorical x axis (here --vcpu-pin) is drawn as grouped bars with error bars, not as lines
// between categories; a series missing a category keeps its slot as a gap so clusters line up.
TEST(MatrixPlots, CategoricalAxesAreGroupedBars) {
  TempDir t;
  MatrixSpec spec =
      make_spec({{"vcpu-pin", "none,1:1"}, {"lock", "ticket,mcs"}, {"sched", "credit"}}, 1, 7);
  std::vector<RunRow> rows;
  for (const Cell& c : expand(spec)) {
    const bool mcs = c.values.at("lock") == "mcs";
    if (mcs && c.values.at("vcpu-pin") == "none") continue;  // a cell that did not finish
    rows.push_back({c.id, c.values, c.rep, run_metrics(canned_record(mcs ? 30 : 10, 100)), ""});
  }
  auto warnings = write_plots(spec, rows, t.sub("plots"));
  std::stringstream dat, gp;
  dat << std::ifstream(t.sub("plots/boot_max_ms.dat")).rdbuf();
  gp << std::ifstream(t.sub("plots/boot_max_ms.gp")).rdbuf();
  EXPECT_NE(dat.str().find("# lock=mcs\n0 ? ? ? 0\n1 30 30 30 1\n"), std::string::npos)
      << dat.str();
  EXPECT_NE(gp.str().find("set style data histograms"), std::string::npos) << gp.str();
  EXPECT_NE(gp.str().find("set style histogram errorbars"), std::string::npos) << gp.str();
  EXPECT_NE(gp.str().find("set xtics ('none' 0, '1:1' 1)\n"), std::string::npos) << gp.str();
  EXPECT_NE(gp.str().find("using 2:3:4 title"), std::string::npos) << gp.str();
  EXPECT_EQ(gp.str().find("yerrorlines"), std::string::npos) << gp.str();
  if (!warnings.empty() && warnings[0].find("not found") != std::string::npos)
    GTEST_SKIP() << "gnuplot is not installed: " << warnings[0];
  EXPECT_TRUE(warnings.empty()) << warnings[0];
  EXPECT_GT(fs::file_size(t.sub("plots/boot_max_ms.png")), 1000u);
}

TEST(Stats, MedianOfOddAndEvenSamples) {
  EXPECT_EQ(median({3, 1, 2}), 2);
  EXPECT_EQ(median({4, 1, 3, 2}), 2.5);
  EXPECT_TRUE(std::isnan(median({})));
}

TEST(Stats, MannWhitneyExactMatchesHandComputedValues) {
  // Complete separation, 5 vs 5: U = 0, p = 2 / C(10, 5) = 2 / 252.
  MannWhitney a = mann_whitney({1, 2, 3, 4, 5}, {6, 7, 8, 9, 10});
  EXPECT_TRUE(a.exact);
  EXPECT_EQ(a.u, 0);
  EXPECT_NEAR(a.p, 2.0 / 252, 1e-12);
  // Interleaved 3 vs 3: U = 3; P(U <= 3) = (1+1+2+3)/20, two-sided 0.7.
  MannWhitney b = mann_whitney({1, 3, 5}, {2, 4, 6});
  EXPECT_EQ(b.u, 3);
  EXPECT_NEAR(b.p, 0.7, 1e-12);
  // Symmetric in direction.
  EXPECT_NEAR(mann_whitney({6, 7, 8, 9, 10}, {1, 2, 3, 4, 5}).p, 2.0 / 252, 1e-12);
}

TEST(Stats, MannWhitneyWithTiesUsesTheCorrectedNormalApproximation) {
  MannWhitney same = mann_whitney({5, 5, 5}, {5, 5, 5});
  EXPECT_FALSE(same.exact);
  EXPECT_EQ(same.p, 1.0);
  // 8 vs 8, separated but with ties inside each group: far below 0.05, still not exact.
  MannWhitney sep = mann_whitney({1, 1, 2, 2, 3, 3, 4, 4}, {10, 10, 11, 11, 12, 12, 13, 13});
  EXPECT_FALSE(sep.exact);
  EXPECT_LT(sep.p, 0.002);
  EXPECT_GT(sep.p, 0.0001);
}

TEST(Stats, BootstrapIntervalOfTheRatio) {
  Interval exact = bootstrap_ratio_ci({10, 10, 10, 10}, {20, 20, 20, 20});
  EXPECT_DOUBLE_EQ(exact.lo, 2.0);
  EXPECT_DOUBLE_EQ(exact.hi, 2.0);
  Interval apart = bootstrap_ratio_ci({10, 11, 12, 13, 14}, {20, 21, 22, 23, 24});
  EXPECT_GE(apart.lo, 20.0 / 14);
  EXPECT_LE(apart.hi, 24.0 / 10);
  EXPECT_GT(apart.lo, 1.0);
  Interval overlap = bootstrap_ratio_ci({10, 12, 14, 16, 18}, {11, 13, 15, 17, 19});
  EXPECT_LT(overlap.lo, 1.0);
  EXPECT_GT(overlap.hi, 1.0);
  // Deterministic for a seed.
  Interval again = bootstrap_ratio_ci({10, 12, 14, 16, 18}, {11, 13, 15, 17, 19});
  EXPECT_EQ(overlap.lo, again.lo);
  EXPECT_TRUE(std::isnan(bootstrap_ratio_ci({0, 0, 0}, {1, 2, 3}).lo));
}

TEST(Compare, VerdictFollowsEachMetricsDirection) {
  RunSet a{"a", {}}, b{"b", {}};
  for (int i = 0; i < 6; i++) {
    a.runs.push_back(run_metrics(canned_record(100 + i, 1000 + i)));
    b.runs.push_back(run_metrics(canned_record(50 + i, 2000 + i)));  // faster and more work
  }
  auto rows = compare_sets(a, b);
  std::map<std::string, MetricComparison> by;
  for (const auto& r : rows) by[r.metric] = r;
  ASSERT_TRUE(by.count("boot_max_ms"));
  EXPECT_TRUE(by["boot_max_ms"].significant);
  EXPECT_EQ(by["boot_max_ms"].verdict, "better");
  EXPECT_NEAR(by["boot_max_ms"].ratio, 52.5 / 102.5, 1e-9);
  EXPECT_EQ(by["guest_iterations_per_s"].verdict, "better");
  EXPECT_FALSE(by["call_lock_wait_ms"].significant);  // identical
  EXPECT_EQ(by["call_lock_wait_ms"].ratio, 1.0);
  std::string text = comparison_text(a, b, rows);
  EXPECT_NE(text.find("* better"), std::string::npos) << text;
  json j = comparison_json(a, b, rows);
  EXPECT_EQ(j["metrics"][0]["metric"], "boot_p50_ms");
  // Swapped: worse.
  auto back = compare_sets(b, a, {"boot_max_ms"});
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].verdict, "worse");
}

TEST(Compare, LoadsRecordsAndMatrixDirectoriesAndRejectsJunk) {
  TempDir t;
  fs::create_directories(t.sub("m/cells"));
  std::ofstream(t.sub("m/cells/a.json")) << canned_record(10, 1).dump();
  std::ofstream(t.sub("m/cells/b.json")) << canned_record(20, 1).dump();
  std::ofstream(t.sub("m/cells/partial.json")) << canned_record(30, 1, true).dump();
  EXPECT_EQ(load_run_set(t.sub("m")).runs.size(), 2u);
  EXPECT_EQ(load_run_set(t.sub("m/cells/a.json")).runs.size(), 1u);
  std::ofstream(t.sub("junk.json")) << "{not json";
  EXPECT_THROW(load_run_set(t.sub("junk.json")), ConfigError);
  EXPECT_THROW(load_run_set(t.sub("missing")), ConfigError);
  fs::create_directories(t.sub("empty"));
  EXPECT_THROW(load_run_set(t.sub("empty")), ConfigError);
}

TEST(Compare, GroupsTwoMatricesCellByCell) {
  TempDir t;
  std::ostringstream log;
  // Same axes, B's testbed twice as slow to boot: every vms group compares to 2x.
  MatrixSpec spec = make_spec({{"vms", "1,2"}, {"guest", "spin"}}, 4, 1);
  run_matrix(spec, {t.sub("a"), false, false}, kvmscale::app::parse_run_args, fake_run, nullptr,
             log);
  run_matrix(
      spec, {t.sub("b"), false, false}, kvmscale::app::parse_run_args,
      [](const kvmscale::app::RunConfig& c) {
        json r = canned_record(20.0 * c.vms, 1);
        r["config"] = c.to_json();
        return r;
      },
      nullptr, log);
  auto ga = load_grouped(t.sub("a"), {"vms"}), gb = load_grouped(t.sub("b"), {"vms"});
  ASSERT_EQ(ga.size(), 2u);
  ASSERT_EQ(ga.count("vms=2"), 1u);
  EXPECT_EQ(ga["vms=2"].runs.size(), 4u);
  for (const auto& key : {"vms=1", "vms=2"}) {
    auto rows = compare_sets(ga[key], gb[key], {"boot_max_ms"});
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_DOUBLE_EQ(rows[0].ratio, 2.0) << key;
    EXPECT_EQ(rows[0].verdict, "worse");
  }
  EXPECT_THROW(load_grouped(t.sub("a"), {"lock"}), ConfigError);      // not an axis
  EXPECT_THROW(load_grouped(t.path.string(), {"vms"}), ConfigError);  // not a matrix
}

TEST(Scenario, PlansScaleWithTheHostAndEveryRunIsValid) {
  for (uint32_t cpus : {2u, 16u, 192u}) {
    for (const auto& name : scenario_names()) {
      ScenarioPlan p = plan_scenario(name, {cpus, 5, "3s", 1});
      SCOPED_TRACE(name + " on " + std::to_string(cpus) + " CPUs");
      auto cells = expand(p.spec);
      EXPECT_EQ(cells.size() % 5, 0u);
      for (const auto& c : cells)
        EXPECT_NO_THROW(kvmscale::app::parse_run_args(cell_args(p.spec, c)));
      // Every comparison selects cells that exist.
      for (const auto& cmp : p.comparisons)
        for (const auto* sel : {&cmp.a, &cmp.b}) {
          bool found = false;
          for (const auto& c : cells) {
            bool all = true;
            for (const auto& [k, v] : *sel) all = all && c.values.count(k) && c.values.at(k) == v;
            found = found || all;
          }
          EXPECT_TRUE(found) << cmp.label;
        }
    }
  }
  EXPECT_THROW(plan_scenario("nope", {}), ConfigError);
}

TEST(MatrixSpecFile, IsValidatedAsStrictlyAsTheCommandLine) {
  const nlohmann::json good = make_spec({{"vms", "1,2"}, {"guest", "spin"}}, 2, 7).to_json();
  EXPECT_NO_THROW(MatrixSpec::from_json(good));
  auto with = [&](auto edit) {
    nlohmann::json j = good;
    edit(j);
    return j;
  };
  const std::vector<nlohmann::json> bad = {
      with([](auto& j) { j["axes"][0]["values"] = nlohmann::json::array(); }),  // used to segfault
      with([](auto& j) { j["axes"][0]["values"] = {"1"}; }),
      with([](auto& j) {
        j["axes"][0]["values"] = {"1", "1"};
      }),
      with([](auto& j) {
        j["axes"][0]["values"] = {"1", ""};
      }),
      with([](auto& j) {
        j["axes"][0]["values"] = {1, 2};
      }),
      with([](auto& j) { j["repeat"] = -1; }),  // used to run 2^32-1 times
      with([](auto& j) { j["repeat"] = 1e12; }),
      with([](auto& j) { j["repeat"] = 0; }),
      with([](auto& j) { j["repeat"] = 1001; }),
      with([](auto& j) { j["repeat"] = "3"; }),
      with([](auto& j) { j["seed"] = -5; }),
      with([](auto& j) {
        j["fixed"].push_back({{"flag", "vms"}, {"value", "3"}});
      }),
      with([](auto& j) { j.erase("axes"); }),
  };
  for (const auto& j : bad) EXPECT_THROW(MatrixSpec::from_json(j), ConfigError) << j.dump();
}

// A 2x2 matrix run to the end with a fake runner, ready to be tampered with and resumed.
struct FinishedMatrix {
  TempDir t;
  MatrixSpec spec = two_by_two(1);
  MatrixOptions opt{t.sub("m"), false, false};
  std::ostringstream log;
  int calls = 0;
  std::function<json(const kvmscale::app::RunConfig&)> run = [this](const auto& c) {
    calls++;
    return fake_run(c);
  };
  std::vector<fs::path> files;  // the cells' records, sorted
  FinishedMatrix() {
    run_matrix(spec, opt, kvmscale::app::parse_run_args, run, nullptr, log);
    for (const auto& e : fs::directory_iterator(t.sub("m/cells"))) files.push_back(e.path());
    std::sort(files.begin(), files.end());
  }
  // Resumes it; returns the outcome, with `calls` counting the runs it made.
  MatrixOutcome resume() {
    MatrixOptions o = opt;
    o.resume = true;
    calls = 0;
    return run_matrix(spec, o, kvmscale::app::parse_run_args, run, nullptr, log);
  }
};

TEST(MatrixRun, ResumeTrustsARecordOnlyIfItIsTheRunOfItsCell) {
  FinishedMatrix m;
  ASSERT_EQ(m.calls, 4);
  // One cell's file now holds another configuration's record, and a SIGKILL left a temp file.
  json other = json::parse(std::ifstream(m.files[1]));
  std::ofstream(m.files[0]) << other.dump();
  std::ofstream(m.t.sub("m/cells/.x.json.tmp.123")) << "{";
  MatrixOutcome o = m.resume();
  EXPECT_EQ(m.calls, 1) << "the cell whose record belonged to another configuration runs again";
  EXPECT_EQ(o.warnings.size(), 1u);
  EXPECT_TRUE(fs::exists(m.t.sub("m/mismatched")));
  EXPECT_FALSE(fs::exists(m.t.sub("m/cells/.x.json.tmp.123")));
}

// A record written before a setting existed (no "migration_delay_ns" in its config) is still the
// run of its cell: the missing key reads back as the default it ran with. One that ran with
// another value of a key it does have is not.
TEST(MatrixRun, ARecordFromBeforeANewSettingIsStillTheRunOfItsCell) {
  FinishedMatrix m;
  ASSERT_EQ(m.calls, 4);
  json old = json::parse(std::ifstream(m.files[0]));
  ASSERT_TRUE(old["config"].contains("migration_delay_ns"));
  old["config"].erase("migration_delay_ns");
  std::ofstream(m.files[0]) << old.dump();
  json changed = json::parse(std::ifstream(m.files[1]));
  changed["config"]["migration_delay_ns"] = 1000000;
  std::ofstream(m.files[1]) << changed.dump();
  m.resume();
  EXPECT_EQ(m.calls, 1) << "only the cell whose record ran with another delay runs again";
}

// Whether a cell's file is a usable run of that cell is decided in one place: --resume runs
// again what --collect and compare leave out, and every refusal is named with its reason.
TEST(CellRecords, AWrongTypedRecordIsNamedLeftOutAndRunAgainByResume) {
  FinishedMatrix m;
  json r = json::parse(std::ifstream(m.files[0]));
  r["run"]["exec_ns"] = "x";
  std::ofstream(m.files[0]) << r.dump();
  const std::string name = "cells/" + m.files[0].filename().string();
  std::vector<std::string> warnings;
  EXPECT_EQ(load_rows(m.spec, m.opt.dir, &warnings).size(), 3u);
  ASSERT_EQ(warnings.size(), 1u) << "collect names what it leaves out";
  EXPECT_NE(warnings[0].find(name), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("run.exec_ns"), std::string::npos) << warnings[0];
  RunSet set = load_run_set(m.opt.dir);
  EXPECT_EQ(set.runs.size(), 3u);
  ASSERT_EQ(set.skipped.size(), 1u);
  EXPECT_NE(set.skipped[0].find("run.exec_ns"), std::string::npos) << set.skipped[0];
  MatrixOutcome o = m.resume();
  EXPECT_EQ(m.calls, 1) << "a record collect leaves out is not a finished run for resume";
  ASSERT_EQ(o.warnings.size(), 1u);
  EXPECT_NE(o.warnings[0].find("run.exec_ns"), std::string::npos) << o.warnings[0];
  EXPECT_TRUE(fs::exists(m.t.sub("m/mismatched/" + m.files[0].filename().string())));
  EXPECT_EQ(load_rows(m.spec, m.opt.dir).size(), 4u);
}

TEST(CellRecords, ARecordOfAnotherConfigurationIsNotPooledByCollectOrCompare) {
  FinishedMatrix m;
  // files: vms-1_lock-mcs, vms-1_lock-ticket, vms-2_lock-mcs, vms-2_lock-ticket (r0 each).
  ASSERT_NE(m.files[0].string().find("vms-1_lock-mcs"), std::string::npos);
  fs::copy_file(m.files[2], m.files[0], fs::copy_options::overwrite_existing);  // a vms=2 run
  std::vector<std::string> warnings;
  std::vector<RunRow> rows = load_rows(m.spec, m.opt.dir, &warnings);
  EXPECT_EQ(rows.size(), 3u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cells/vms-1_lock-mcs_r0.json"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("config.vms"), std::string::npos) << warnings[0];
  EXPECT_EQ(load_run_set(m.opt.dir).runs.size(), 3u);
  std::vector<std::string> left_out;
  auto groups = load_grouped(m.opt.dir, {"vms"}, &left_out);
  EXPECT_EQ(groups["vms=1"].runs.size(), 1u);
  EXPECT_EQ(left_out.size(), 1u);
  write_outputs(m.spec, m.opt.dir, false);
  std::ifstream csv(m.t.sub("m/summary.csv"));
  int lines = 0;
  for (std::string l; std::getline(csv, l);) lines++;
  EXPECT_EQ(lines, 4) << "header and three runs";
  m.resume();
  EXPECT_EQ(m.calls, 1);
}

// The invariant behind the tests above: for any file at a cell's place, --resume counts the cell
// done exactly when --collect (and so compare and the plots) keeps its run.
TEST(CellRecords, ResumeCountsDoneExactlyWhatCollectKeeps) {
  const std::vector<std::pair<const char*, std::function<void(const fs::path&, json&)>>>
      tamperings = {
          {"untouched", [](const fs::path&, json&) {}},
          {"wrong type", [](const fs::path&, json& r) { r["run"]["exec_ns"] = "x"; }},
          {"negative", [](const fs::path&, json& r) { r["summary"]["boot_ns"]["max"] = -1; }},
          {"shape",
           [](const fs::path&, json& r) {
             r["sched"] = {{"pcpus", 5}};
           }},
          {"other config", [](const fs::path&, json& r) { r["config"]["vms"] = 8; }},
          {"interrupted", [](const fs::path&, json& r) { r["run"]["interrupted"] = true; }},
          {"schema", [](const fs::path&, json& r) { r["schema_version"] = 99; }},
          {"backend",
           [](const fs::path&, json& r) {
             r["host"] = {{"backend", "NoSuch"}};
           }},
          {"not JSON", [](const fs::path& f, json&) { std::ofstream(f) << "{"; }},
          {"directory",
           [](const fs::path& f, json&) {
             fs::remove(f);
             fs::create_directories(f);
           }},
      };
  for (const auto& [what, tamper] : tamperings) {
    SCOPED_TRACE(what);
    FinishedMatrix m;
    const json original = json::parse(std::ifstream(m.files[0]));
    json r = original;
    tamper(m.files[0], r);
    if (r != original) std::ofstream(m.files[0]) << r.dump();  // a field changed
    std::set<std::string> kept, done;
    for (const RunRow& row : load_rows(m.spec, m.opt.dir)) kept.insert(row.id);
    MatrixOptions resume = m.opt;
    resume.resume = true;
    PreparedMatrix p = prepare_matrix(m.spec, resume, kvmscale::app::parse_run_args);
    for (size_t i = 0; i < p.cells.size(); i++)
      if (p.done[i]) done.insert(p.cells[i].id);
    EXPECT_EQ(kept, done);
    EXPECT_EQ(done.size(), std::string(what) == "untouched" ? 4u : 3u);
  }
}

namespace {

// Runs `read`, a reader that may meet the FIFO at `fifo`; true if it returned by itself. One
// that waits for a writer gets one after 5 s (opened and closed: it then reads EOF), so a reader
// that blocks fails the test instead of hanging the suite.
bool returns_by_itself(const std::string& fifo, const std::function<void()>& read) {
  auto done = std::async(std::launch::async, read);
  const bool alone = done.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  while (done.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
  }
  done.get();
  return alone;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

}  // namespace

TEST(CellRecords, AFifoOrADirectoryWhereARecordBelongsIsNamedNotWaitedFor) {
  FinishedMatrix m;
  const std::string fifo = m.files[0].string(), dir = m.files[1].string();
  fs::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  fs::remove(dir);
  fs::create_directories(dir + "/inside");
  const std::string fifo_name = "cells/" + m.files[0].filename().string(),
                    dir_name = "cells/" + m.files[1].filename().string();
  std::vector<std::string> warnings;
  size_t rows = 0;
  EXPECT_TRUE(returns_by_itself(fifo, [&] {
    rows = load_rows(m.spec, m.opt.dir, &warnings).size();
  })) << "collect";
  EXPECT_EQ(rows, 2u);
  const std::string all = joined(warnings);
  EXPECT_NE(all.find(fifo_name + ": not a regular file (a FIFO)"), std::string::npos) << all;
  EXPECT_NE(all.find(dir_name + ": not a regular file (a directory)"), std::string::npos) << all;
  RunSet set;
  EXPECT_TRUE(returns_by_itself(fifo, [&] { set = load_run_set(m.opt.dir); })) << "compare DIR";
  EXPECT_EQ(set.runs.size(), 2u);
  EXPECT_EQ(set.skipped.size(), 2u) << joined(set.skipped);
  std::string error;
  EXPECT_TRUE(returns_by_itself(fifo, [&] {
    try {
      load_run_set(fifo);
    } catch (const ConfigError& e) {
      error = e.what();
    }
  })) << "compare FILE";
  EXPECT_NE(error.find(fifo + " is not a finished run record: not a regular file (a FIFO)"),
            std::string::npos)
      << error;
  EXPECT_TRUE(returns_by_itself(fifo, [&] { m.resume(); })) << "resume";
  EXPECT_EQ(m.calls, 2) << "both cells run again";
  EXPECT_TRUE(fs::is_regular_file(fifo));
  EXPECT_TRUE(fs::is_regular_file(dir));
  EXPECT_TRUE(fs::is_directory(m.t.sub("m/mismatched/" + m.files[1].filename().string())));
}

TEST(MatrixSpecFile, AFifoOrADirectoryAsMatrixJsonIsRefusedNamingIt) {
  TempDir t;
  fs::create_directories(t.sub("m/cells"));
  const std::string spec_file = t.sub("m/matrix.json");
  ASSERT_EQ(mkfifo(spec_file.c_str(), 0600), 0);
  std::string error;
  EXPECT_TRUE(returns_by_itself(spec_file, [&] {
    try {
      load_spec(t.sub("m"));
    } catch (const ConfigError& e) {
      error = e.what();
    }
  }));
  EXPECT_NE(error.find(spec_file + ": not a regular file (a FIFO)"), std::string::npos) << error;
  error.clear();
  EXPECT_TRUE(returns_by_itself(spec_file, [&] {
    try {
      load_run_set(t.sub("m"));
    } catch (const ConfigError& e) {
      error = e.what();
    }
  }));
  EXPECT_NE(error.find(spec_file + ": not a regular file"), std::string::npos) << error;
  fs::remove(spec_file);
  fs::create_directories(spec_file);
  try {
    load_spec(t.sub("m"));
    ADD_FAILURE() << "a directory was read as matrix.json";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(spec_file + ": not a regular file (a directory)"),
              std::string::npos)
        << e.what();
  }
}

namespace {

// A record with every container the metrics read (sched, cross_calls, PoD, lock classes).
json rich_record() {
  json r = json::parse(canned_record(10, 100).dump());
  r["host"] = {{"hostname", "h"}, {"backend", "VMX"}};
  r["sched"] = {{"sched_overhead", 0.01},
                {"jain_fairness", 1.0},
                {"pcpus",
                 {{{"balance",
                    {{"attempts_idle", 1},
                     {"attempts_over", 1},
                     {"trylocks", 3},
                     {"trylock_failures", 1},
                     {"skipped_bitmap", 0},
                     {"skipped_count", 0},
                     {"steals", 1},
                     {"balance_ns", 500}}}}}},
                {"vcpus", {{{"migrations", 2}}}}};
  r["cross_calls"] = {{"calls", 4},
                      {"latency_ns_total", 4000},
                      {"latency_ns_max", 2000},
                      {"flush_mask_mean", 1.5},
                      {"initiators_max_concurrent", 2}};
  r["locks"]["classes"]["runq"] = {{"wait_ns", 100}};
  r["vms"][0]["pod"] = {
      {"populates", 10}, {"reclaimed", 2}, {"sweeps", 1}, {"flushes", 3}, {"fault_stall_ns", 5000}};
  return json::parse(r.dump());  // numbers as a file reads them back
}

}  // namespace

TEST(RecordSchema, WrongShapesAndNegativeDurationsAreRefusedNamingTheField) {
  TempDir t;
  const json good = rich_record();
  ASSERT_EQ(record_problem(good), "");
  EXPECT_EQ(run_metrics(good).at("balance_steals"), 1.0);
  struct Case {
    const char* pointer;
    json value;
    const char* field;
  } cases[] = {
      {"/sched/pcpus", 5, "sched.pcpus"},
      {"/cross_calls", {1, 2}, "cross_calls"},
      {"/summary/boot_ns", "fast", "summary.boot_ns"},
      {"/vms/0/pod", "x", "vms[0].pod"},
      {"/run/exec_ns", "x", "run.exec_ns"},
      {"/run/exec_ns", -1, "run.exec_ns"},
      {"/summary/boot_ns/max", -5, "summary.boot_ns.max"},
      {"/locks/classes/call/wait_ns", -1.5, "locks.classes.call.wait_ns"},
      {"/sched/pcpus/0/balance/balance_ns", -3, "sched.pcpus[0].balance.balance_ns"},
      {"/sched/pcpus/0/balance", {1}, "sched.pcpus[0].balance"},
      {"/vms/0/pod/fault_stall_ns", -1, "vms[0].pod.fault_stall_ns"},
      {"/vms/0/metrics/iterations", "many", "vms[0].metrics.iterations"},
      {"/vms/0/metrics", 3, "vms[0].metrics"},
      {"/vms", "all", "vms"},
      {"/sched/vcpus/0", 7, "sched.vcpus[0]"},
      {"/host/hostname", 5, "host.hostname"},
      {"/host/backend", 5, "host.backend"},
      {"/locks/classes", {1, 2}, "locks.classes"},
  };
  int n = 0;
  for (const auto& c : cases) {
    json r = good;
    r[json::json_pointer(c.pointer)] = c.value;
    const std::string why = record_problem(r);
    EXPECT_NE(why.find(c.field), std::string::npos) << c.pointer << ": '" << why << "'";
    // Read as a file: refused with the file and the field named, never a library message.
    const std::string file = t.sub("r" + std::to_string(n++) + ".json");
    std::ofstream(file) << r.dump();
    try {
      load_run_set(file);
      ADD_FAILURE() << c.pointer << " was read";
    } catch (const ConfigError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(file), std::string::npos) << msg;
      EXPECT_NE(msg.find(c.field), std::string::npos) << msg;
      EXPECT_EQ(msg.find("json.exception"), std::string::npos) << msg;
    }
  }
}

// Whatever value stands at any place of a record, the record is refused (naming a field) or its
// metrics are read without an exception: no reader meets a shape the schema let through.
TEST(RecordSchema, EveryShapeAtEveryPlaceIsRefusedOrRead) {
  const json good = rich_record();
  const json flat = good.flatten();
  std::vector<std::string> places;
  for (const auto& [leaf, v] : flat.items()) {
    (void)v;
    for (std::string p = leaf; !p.empty(); p = p.substr(0, p.rfind('/')))
      if (std::find(places.begin(), places.end(), p) == places.end()) places.push_back(p);
  }
  const std::vector<json> values = {
      "x",     -1,   -0.5, json::array({1, 2}),          json::object(),
      nullptr, true, 1.5,  json::array({json::object()})};
  for (const auto& place : places) {
    for (const auto& v : values) {
      json r = good;
      r[json::json_pointer(place)] = v;
      if (!record_problem(r).empty()) continue;
      EXPECT_NO_THROW(run_metrics(r)) << place << " = " << v.dump();
    }
  }
}

TEST(Compare, RecordsOfAnotherSchemaOrWithBadTypesAreSkippedAndNamed) {
  TempDir t;
  fs::create_directories(t.sub("d"));
  auto write = [&](const std::string& name, const json& j) {
    std::ofstream(t.sub("d/" + name)) << j.dump();
  };
  write("good.json", canned_record(10, 100));
  json v99 = canned_record(10, 100);
  v99["schema_version"] = 99;
  write("v99.json", v99);
  json vstr = canned_record(10, 100);
  vstr["schema_version"] = "1";
  write("vstr.json", vstr);
  json empty_summary = canned_record(10, 100);
  empty_summary["summary"] = json::object();
  write("empty-summary.json", empty_summary);
  json bad_type = canned_record(10, 100);
  bad_type["locks"]["classes"]["call"]["wait_ns"] = "lots";
  write("bad-type.json", bad_type);
  std::ofstream(t.sub("d/garbage.json")) << "not json";
  RunSet set = load_run_set(t.sub("d"));
  EXPECT_EQ(set.runs.size(), 1u) << "only good.json";
  ASSERT_EQ(set.skipped.size(), 5u);
  std::string all;
  for (const auto& s : set.skipped) all += s + "\n";
  for (const char* why : {"schema_version is not 1 to", "summary.vms is missing",
                          "locks.classes.call.wait_ns is \"lots\", not a number >= 0", "not JSON"})
    EXPECT_NE(all.find(why), std::string::npos) << all;
  EXPECT_THROW(load_run_set(t.sub("d/v99.json")), ConfigError);
}

// A record whose host.backend is not a string is refused, naming the field, not a raw JSON type
// error (exit 1) from compare.
TEST(Compare, ABackendThatIsNotAStringIsNamedNotARawError) {
  TempDir t;
  fs::create_directories(t.sub("d"));
  json r = canned_record(10, 100);
  r["host"]["backend"] = 5;
  std::ofstream(t.sub("d/r.json")) << r.dump();
  std::ofstream(t.sub("d/good.json")) << canned_record(10, 100).dump();
  RunSet set;
  ASSERT_NO_THROW(set = load_run_set(t.sub("d")));
  EXPECT_EQ(set.runs.size(), 1u);
  ASSERT_EQ(set.skipped.size(), 1u);
  EXPECT_NE(set.skipped[0].find("r.json: host.backend is 5, not a string or null"),
            std::string::npos)
      << set.skipped[0];
}

// Schema 2 only added fields: records of schema 1 (older builds) are still read.
TEST(Compare, RecordsOfEverySupportedSchemaAreRead) {
  json r = json::parse(canned_record(10, 100).dump());  // counts read back as unsigned
  for (int v = kvmscale::app::kOldestRecordSchemaVersion; v <= kvmscale::app::kRecordSchemaVersion;
       v++) {
    r["schema_version"] = v;
    EXPECT_EQ(record_problem(r), "") << v;
  }
  r["schema_version"] = kvmscale::app::kOldestRecordSchemaVersion - 1;
  EXPECT_NE(record_problem(r), "");
  r["schema_version"] = kvmscale::app::kRecordSchemaVersion + 1;
  EXPECT_NE(record_problem(r), "");
}

// gnuplot exits 0 when a full disk cut its output short: such images must not be kept. A fake
// gnuplot on PATH writes a truncated PNG and an empty SVG, as it does on a nearly full disk.
TEST(MatrixPlots, IncompleteImagesAreNotKept) {
  TempDir t;
  fs::create_directories(t.sub("bin"));
  {
    std::ofstream fake(t.sub("bin/gnuplot"));
    fake << "#!/bin/sh\n"
            "eval \"$(echo \"$2\" | sed 's/; /\\n/' | sed 's/^/export /')\"\n"
            "cd \"$(sed -n \"s/^cd '\\(.*\\)'$/\\1/p\" \"$3\")\"\n"
            "printf '\\211PNG\\r\\n' > \"$png_out\"\n"
            "touch \"$png_out.ran\"\n"
            ": > \"$svg_out\"\n"
            "exit 0\n";
  }
  fs::permissions(t.sub("bin/gnuplot"), fs::perms::owner_all);
  const char* old_path = getenv("PATH");
  std::string saved = old_path ? old_path : "";
  setenv("PATH", (t.sub("bin") + ":" + saved).c_str(), 1);
  MatrixSpec spec = two_by_two(1);
  std::vector<RunRow> rows;
  for (const Cell& c : expand(spec))
    rows.push_back({c.id, c.values, c.rep, run_metrics(canned_record(10, 100)), ""});
  auto warnings = write_plots(spec, rows, t.sub("plots"));
  setenv("PATH", saved.c_str(), 1);
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(warnings[0].find("incomplete"), std::string::npos) << warnings[0];
  EXPECT_TRUE(fs::exists(t.sub("plots/boot_max_ms.png.part.ran"))) << "the fake gnuplot ran";
  for (const auto& e : fs::directory_iterator(t.sub("plots"))) {
    const std::string ext = e.path().extension().string();
    EXPECT_TRUE(ext != ".png" && ext != ".svg" && ext != ".part") << e.path();
  }
}

namespace {

// A RunFn that counts its calls and fakes the run.
struct CountingRun {
  int calls = 0;
  json operator()(const kvmscale::app::RunConfig& c) {
    calls++;
    return fake_run(c);
  }
};

// An image file of `bytes` bytes.
std::string image_file(const std::string& path, size_t bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << std::string(bytes, '\xf4');  // hlt
  return path;
}

}  // namespace

// What `run` refuses before it starts (guest files that are missing, not regular files or over
// 1 MiB; pins outside a process's pool) is refused for every cell before the matrix runs any:
// before, the fake run ran the earlier cells and the matrix ended at the bad one, no summary.
TEST(MatrixRun, EveryCellIsCheckedAsRunChecksItBeforeAnyRun) {
  TempDir t;
  const std::string good = image_file(t.sub("img/good.bin"), 64);
  const std::string big = image_file(t.sub("img/big.bin"), (1 << 20) + 1);
  struct Case {
    std::vector<std::pair<std::string, std::string>> flags;
    std::string message;
  } cases[] = {
      {{{"guest", "spin,file:" + good + ",file:" + t.sub("img/missing.bin")}}, "missing.bin"},
      {{{"guest", "spin,file:" + big}}, "1 MiB"},
      {{{"guest", "spin,file:" + t.sub("img")}}, "not a regular file"},
      // --procs 2 makes two pools of one pCPU: vm1's vCPU pinned to pCPU 0 is outside its own.
      {{{"sched", "credit"},
        {"pcpus", "2"},
        {"vms", "2"},
        {"vcpu-pin", "0"},
        {"procs", "1,2"},
        {"guest", "spin"}},
       "outside the pool"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.message);
    const std::string dir = t.sub("m-" + std::to_string(&c - cases));
    CountingRun run;
    std::ostringstream log;
    try {
      run_matrix(make_spec(c.flags, 2, 1), {dir, false, false}, kvmscale::app::parse_run_args,
                 std::ref(run), nullptr, log);
      ADD_FAILURE() << "the matrix ran";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
    EXPECT_EQ(run.calls, 0);
    EXPECT_FALSE(fs::exists(dir + "/matrix.json"));
  }
}

// A long but valid axis value (here a 300-byte image path) gives an id too long for a file name:
// it is shortened to a readable prefix and a hash of the cell's values, the same every time, so
// the matrix runs, resumes and collects. Before, the id was the whole value: the first record
// could not be written ("File name too long") after its run.
TEST(MatrixRun, AValueTooLongForAFileNameGetsAShortStableId) {
  TempDir t;
  const std::string long_dir = t.sub(std::string(200, 'd'));
  const std::string image = image_file(long_dir + "/" + std::string(100, 'i') + ".bin", 64);
  ASSERT_GE(image.size(), 300u);
  MatrixSpec spec = make_spec({{"guest", "hello,file:" + image}, {"vms", "1,2"}}, 2, 3);
  const std::vector<Cell> cells = expand(spec);
  std::set<std::string> ids;
  for (const Cell& c : cells) {
    EXPECT_LE(c.id.size(), kMaxCellIdBytes) << c.id;
    ids.insert(c.id);
  }
  EXPECT_EQ(ids.size(), cells.size());
  EXPECT_EQ(cells[0].id, "guest-hello_vms-1_r0");  // short ids are as they were
  const Cell& long_cell = cells[4];
  ASSERT_EQ(long_cell.values.at("guest"), "file:" + image);
  EXPECT_EQ(long_cell.id.rfind("guest-file-", 0), 0u) << long_cell.id;  // readable
  EXPECT_EQ(long_cell.id.substr(long_cell.id.size() - 3), "_r0") << long_cell.id;
  EXPECT_EQ(expand(spec)[4].id, long_cell.id);  // stable
  EXPECT_NE(cells[5].id, long_cell.id);         // the next repetition
  EXPECT_NE(cells[6].id.substr(0, cells[6].id.size() - 3),
            long_cell.id.substr(0, long_cell.id.size() - 3));  // another cell: another hash

  CountingRun run;
  std::ostringstream log;
  MatrixOptions opt{t.sub("m"), false, false};
  MatrixOutcome o =
      run_matrix(spec, opt, kvmscale::app::parse_run_args, std::ref(run), nullptr, log);
  EXPECT_EQ(o.ran, 8u);
  EXPECT_TRUE(fs::exists(t.sub("m/cells/" + long_cell.id + ".json")));
  EXPECT_EQ(load_rows(spec, opt.dir).size(), 8u);
  opt.resume = true;
  o = run_matrix(spec, opt, kvmscale::app::parse_run_args, std::ref(run), nullptr, log);
  EXPECT_EQ(o.skipped, 8u);
  EXPECT_EQ(run.calls, 8);
}

// A directory so deep that a cell's file would pass PATH_MAX is refused before any run, naming
// the limit (before: the first run ran, then its record could not be written).
TEST(MatrixRun, ADirectoryTooDeepForTheCellFilesIsRefusedBeforeAnyRun) {
  TempDir t;
  fs::path deep = t.path;
  while (deep.string().size() < 3700) deep /= std::string(200, 'p');
  deep /= std::string(3950 - deep.string().size() - 1, 'q');  // 3950 bytes: matrix.json fits
  fs::create_directories(deep);
  MatrixSpec spec =
      make_spec({{"vms", "1,2"}, {"duration", std::string(180, '0') + "1s,2s"}}, 1, 1);
  CountingRun run;
  std::ostringstream log;
  try {
    run_matrix(spec, {(deep / "m").string(), false, false}, kvmscale::app::parse_run_args,
               std::ref(run), nullptr, log);
    ADD_FAILURE() << "the matrix ran";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("PATH_MAX"), std::string::npos) << e.what();
  }
  EXPECT_EQ(run.calls, 0);
  EXPECT_FALSE(fs::exists(deep / "m"));
}

// SIGINT during the checks of a big matrix ends them at once: the stop flag is polled per cell,
// nothing is written and the directory lock is free again.
TEST(MatrixRun, AStopWhileCheckingTheCellsEndsTheChecksAndWritesNothing) {
  TempDir t;
  std::string values;
  for (int i = 1; i <= 40; i++) values += (i > 1 ? "," : "") + std::to_string(i);
  MatrixSpec spec = make_spec({{"vms", values}, {"guest", "spin"}}, 1, 1);
  int checked = 0;
  auto config = [&](const std::vector<std::string>& args) {
    checked++;
    return kvmscale::app::parse_run_args(args);
  };
  CountingRun run;
  std::ostringstream log;
  const std::string dir = t.sub("m");
  MatrixOutcome o = run_matrix(
      spec, {dir, false, false}, config, std::ref(run), [&] { return checked >= 5; }, log);
  EXPECT_TRUE(o.interrupted);
  EXPECT_EQ(checked, 5);  // not 40
  EXPECT_EQ(run.calls, 0);
  EXPECT_FALSE(fs::exists(dir + "/matrix.json"));
  EXPECT_FALSE(fs::exists(dir + "/summary.csv"));
  EXPECT_NO_THROW(MatrixDirLock(dir, MatrixDirLock::Mode::Exclusive));
}
