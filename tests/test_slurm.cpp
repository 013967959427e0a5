// A matrix on Slurm without Slurm: the sbatch script (run by bash with a stand-in kvmscale), which
// cells a submission covers, the directory lock's shared/exclusive semantics, one cell as a task
// runs it, sbatch/squeue replaced by scripts on PATH, and compare --by host.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "app/cli.hpp"
#include "app/record.hpp"
#include "study/compare.hpp"
#include "study/matrix.hpp"
#include "study/slurm.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace kvmscale::study;
using kvmscale::app::ConfigError;
using nlohmann::json;
using std::chrono::milliseconds;

namespace {

// Each test's scratch directory (tests/temp_dir.hpp).
struct TempDir : kvmscale::test::TempDir {
  TempDir() : kvmscale::test::TempDir("kvmscale-slurm") {}
};

using kvmscale::test::slurp;

void write_exe(const std::string& path, const std::string& body) {
  std::ofstream(path) << "#!/bin/bash\n" << body;
  fs::permissions(path, fs::perms::owner_all);
}

// A finished record of `cfg` as run on `host` with KVM backend `backend`.
json record_of(const kvmscale::app::RunConfig& cfg, const std::string& host = "node1",
               const std::string& backend = "VMX", double boot_ms = 10) {
  return {{"schema_version", kvmscale::app::kRecordSchemaVersion},
          {"config", cfg.to_json()},
          {"host", {{"hostname", host}, {"backend", backend}, {"kernel", "Linux 6.1 " + host}}},
          {"run", {{"exec_ns", 1000000000}, {"interrupted", false}}},
          {"summary",
           {{"vms", cfg.vms},
            {"vms_booted", cfg.vms},
            {"vms_crashed", 0},
            {"exits_total", 10},
            {"boot_ns", {{"p50", boot_ms * 1e6}, {"max", boot_ms * 1e6}}}}},
          {"vms", json::array()}};
}

MatrixSpec small_spec() { return make_spec({{"vms", "1,2,3"}, {"guest", "spin"}}, 1, 5); }

// matrix.json of `spec` in `dir` naming `backend`, as prepare_matrix writes it on such a host.
void store_matrix(const std::string& dir, const MatrixSpec& spec, const std::string& backend) {
  fs::create_directories(fs::path(dir) / "cells");
  json meta = {{"spec", spec.to_json()}, {"tool", "test"}, {"runs", 3}, {"backend", backend}};
  kvmscale::app::write_file_atomically(dir + "/matrix.json", meta.dump());
}

// PATH holding only `dir` for the lifetime of the object (sbatch/squeue stand-ins).
struct PathOverride {
  std::string old;
  explicit PathOverride(const std::string& dir) : old(getenv("PATH") ? getenv("PATH") : "") {
    setenv("PATH", dir.c_str(), 1);  // not /usr/bin: the real sbatch may be installed
  }
  ~PathOverride() { setenv("PATH", old.c_str(), 1); }
};

}  // namespace

TEST(SbatchScript, OneArrayTaskPerCellThrottledWithTheUsersOptions) {
  SbatchOptions o{{"--partition=big", "--exclusive"}, 2};
  std::string s = sbatch_script("/shared/m1", "/opt/kvmscale", {"vms-1_r0", "vms-2_r0", "vms-4_r0"},
                                "0123456789abcdef", o);
  EXPECT_EQ(s.rfind("#!/bin/bash\n", 0), 0u);
  EXPECT_NE(s.find("#SBATCH --array=0-2%2\n"), std::string::npos) << s;
  EXPECT_NE(s.find("#SBATCH --output=/shared/m1/slurm/logs/%A_%a.out\n"), std::string::npos);
  EXPECT_NE(s.find("#SBATCH --partition=big\n#SBATCH --exclusive\n"), std::string::npos);
  // #SBATCH lines count only before the first command.
  EXPECT_LT(s.find("#SBATCH --exclusive"), s.find("set -euo pipefail"));
  EXPECT_NE(sbatch_script("/d", "/k", {"a"}, "d", {}).find("#SBATCH --array=0-0\n"),
            std::string::npos)
      << "no throttle: no %N";
}

TEST(SbatchScript, EachTaskRunsItsOwnCellWithTheDigest) {
  TempDir t;
  const std::string fake = t.sub("fake-kvmscale");
  write_exe(fake, "echo \"$@\"\n");
  const std::string script = t.sub("job.sbatch");
  std::ofstream(script) << sbatch_script(t.path.string(), fake, {"c0", "c1", "c2"},
                                         "00000000deadbeef", {});
  for (int task = 0; task < 3; task++) {
    std::string out = t.sub("out" + std::to_string(task));
    std::string cmd =
        "SLURM_ARRAY_TASK_ID=" + std::to_string(task) + " bash " + script + " > " + out;
    ASSERT_EQ(system(cmd.c_str()), 0);
    EXPECT_EQ(slurp(out), "matrix --cell c" + std::to_string(task) + " --out " + t.path.string() +
                              " --matrix-digest 00000000deadbeef\n");
  }
  // Outside the array (no task id) the script fails rather than run some cell.
  EXPECT_NE(system(("bash " + script + " >/dev/null 2>&1").c_str()), 0);
}

TEST(SbatchScript, WhatSbatchCannotCarryIsRefused) {
  EXPECT_THROW(sbatch_script("/d", "/k", {}, "d", {}), ConfigError);
  EXPECT_THROW(sbatch_script("/my dir", "/k", {"a"}, "d", {}), ConfigError);
  EXPECT_THROW(sbatch_script("/d%x", "/k", {"a"}, "d", {}), ConfigError);
  EXPECT_THROW(sbatch_script("/d", "/k k", {"a"}, "d", {}), ConfigError);
  EXPECT_THROW(sbatch_script("/d", "/k", {"a"}, "d", {{"partition=big"}, 0}), ConfigError);
  EXPECT_THROW(sbatch_script("/d", "/k", {"a"}, "d", {{"--x\n#SBATCH --y"}, 0}), ConfigError);
  EXPECT_THROW(sbatch_script("/d", "/k", {"a"}, "d", {{"--array=0-9"}, 0}), ConfigError);
  EXPECT_NO_THROW(sbatch_script("/d", "/k", {"a"}, "d", {{"--account=proj", "-p big"}, 0}));
}

TEST(SlurmCells, ASubmissionCoversExactlyTheCellsWithoutAFinishedRun) {
  TempDir t;
  const std::string dir = t.sub("m");
  MatrixSpec spec = small_spec();
  PreparedMatrix p = prepare_matrix(spec, {dir, false, false}, kvmscale::app::parse_run_args);
  ASSERT_EQ(p.pending_ids().size(), 3u);
  // Run order, not canonical order: the shuffle spreads drift over the array too.
  std::vector<std::string> in_order;
  for (size_t i : run_order(3, spec.seed)) in_order.push_back(p.cells[i].id);
  EXPECT_EQ(p.pending_ids(), in_order);
  // vms-2 finished; vms-3 holds a run of another configuration (moved away, pending again).
  const std::string backend = matrix_backend(dir);  // this host's
  kvmscale::app::write_file_atomically(p.configs[1].out,
                                       record_of(p.configs[1], "node1", backend).dump());
  kvmscale::app::RunConfig other = p.configs[2];
  other.duration_ns += 1;
  kvmscale::app::write_file_atomically(p.configs[2].out, record_of(other, "node1", backend).dump());
  PreparedMatrix again = prepare_matrix(spec, {dir, true, false}, kvmscale::app::parse_run_args);
  std::vector<std::string> pending = again.pending_ids();
  std::sort(pending.begin(), pending.end());
  EXPECT_EQ(pending, (std::vector<std::string>{"vms-1_r0", "vms-3_r0"}));
  EXPECT_EQ(again.warnings.size(), 1u);
  EXPECT_TRUE(fs::exists(dir + "/mismatched/vms-3_r0.json"));
}

TEST(MatrixDirLock, SlurmTasksShareTheDirectoryAWriterHasItAlone) {
  TempDir t;
  const std::string dir = t.sub("m");
  using Mode = MatrixDirLock::Mode;
  {
    // Tasks (separate open file descriptions, as separate processes) run side by side...
    MatrixDirLock task1(dir, Mode::Shared), task2(dir, Mode::Shared);
    // ...but no matrix run, --resume or submission while they do.
    try {
      MatrixDirLock writer(dir, Mode::Exclusive);
      ADD_FAILURE() << "an exclusive lock was granted beside shared ones";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("Slurm job"), std::string::npos) << e.what();
    }
  }
  {
    MatrixDirLock writer(dir, Mode::Exclusive);
    EXPECT_THROW(MatrixDirLock(dir, Mode::Exclusive), ConfigError);
    EXPECT_THROW(MatrixDirLock(dir, Mode::Shared, milliseconds(200)), ConfigError);
  }
  // A task waits for a submission that is still finishing, then runs.
  auto writer = std::make_unique<MatrixDirLock>(dir, Mode::Exclusive);
  std::thread release([&] {
    std::this_thread::sleep_for(milliseconds(300));
    writer.reset();
  });
  EXPECT_NO_THROW(MatrixDirLock(dir, Mode::Shared, std::chrono::seconds(10)));
  release.join();
}

TEST(SlurmCell, RunsOneCellOnceAndWritesItsRecord) {
  TempDir t;
  const std::string dir = t.sub("m");
  MatrixSpec spec = small_spec();
  prepare_matrix(spec, {dir, false, false}, kvmscale::app::parse_run_args);
  int calls = 0;
  auto run = [&](const kvmscale::app::RunConfig& c) {
    calls++;
    return record_of(c, "nodeA", kvmscale::study::matrix_backend(dir));
  };
  std::ostringstream log;
  const std::string digest = spec_digest(load_spec(dir));
  EXPECT_EQ(run_cell(dir, "vms-2_r0", digest, kvmscale::app::parse_run_args, run, log),
            CellOutcome::Ran);
  EXPECT_EQ(calls, 1);
  json rec = json::parse(slurp(dir + "/cells/vms-2_r0.json"));
  EXPECT_EQ(rec["config"]["vms"], 2);
  // A resubmitted task whose cell finished meanwhile does nothing.
  EXPECT_EQ(run_cell(dir, "vms-2_r0", digest, kvmscale::app::parse_run_args, run, log),
            CellOutcome::AlreadyDone);
  EXPECT_EQ(calls, 1);
  EXPECT_THROW(run_cell(dir, "vms-9_r0", digest, kvmscale::app::parse_run_args, run, log),
               ConfigError);
  // An interrupted run (scancel's SIGTERM) is not kept.
  auto interrupted = [](const kvmscale::app::RunConfig& c) {
    json r = record_of(c);
    r["run"]["interrupted"] = true;
    return r;
  };
  EXPECT_EQ(run_cell(dir, "vms-1_r0", "", kvmscale::app::parse_run_args, interrupted, log),
            CellOutcome::Interrupted);
  EXPECT_FALSE(fs::exists(dir + "/cells/vms-1_r0.json"));
  // While a local run holds the directory, a task is refused (after its wait).
  MatrixDirLock writer(dir, MatrixDirLock::Mode::Exclusive);
  EXPECT_THROW(
      run_cell(dir, "vms-1_r0", digest, kvmscale::app::parse_run_args, run, log, milliseconds(100)),
      ConfigError);
  EXPECT_EQ(calls, 1);
}

TEST(SlurmCell, ATaskOfAnotherMatrixOrAnotherBackendRunsNothing) {
  TempDir t;
  const std::string dir = t.sub("m");
  MatrixSpec first = small_spec();
  store_matrix(dir, first, "VMX");
  const std::string digest = spec_digest(first);
  // The directory was emptied and given another matrix (same cell ids, another duration).
  MatrixSpec second = make_spec({{"vms", "1,2,3"}, {"guest", "spin"}, {"duration", "2s"}}, 1, 5);
  ASSERT_NE(spec_digest(second), digest);
  store_matrix(dir, second, "VMX");
  int calls = 0;
  auto run = [&](const kvmscale::app::RunConfig& c) {
    calls++;
    return record_of(c);
  };
  std::ostringstream log;
  try {
    run_cell(dir, "vms-1_r0", digest, kvmscale::app::parse_run_args, run, log);
    ADD_FAILURE() << "a task of another matrix ran";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("another matrix"), std::string::npos) << e.what();
  }
  // A node whose KVM backend is not the matrix's: refused, and the reason kept in failed/.
  store_matrix(dir, second, "NoSuchBackend");
  EXPECT_THROW(
      run_cell(dir, "vms-1_r0", spec_digest(second), kvmscale::app::parse_run_args, run, log),
      ConfigError);
  EXPECT_EQ(calls, 0);
  EXPECT_NE(slurp(dir + "/failed/vms-1_r0.txt").find("NoSuchBackend"), std::string::npos);
}

// The task's "already finished" is the one --collect uses: a record collect would leave out (a
// wrong type, another configuration) is set aside in mismatched/ and the cell runs.
TEST(SlurmCell, ARecordCollectWouldLeaveOutIsSetAsideAndTheCellRuns) {
  TempDir t;
  const std::string dir = t.sub("m");
  PreparedMatrix p =
      prepare_matrix(small_spec(), {dir, false, false}, kvmscale::app::parse_run_args);
  const std::string backend = matrix_backend(dir);  // this host's
  json bad = record_of(p.configs[1], "node1", backend);
  bad["run"]["exec_ns"] = "x";
  kvmscale::app::write_file_atomically(p.configs[1].out, bad.dump());
  kvmscale::app::write_file_atomically(p.configs[2].out,
                                       record_of(p.configs[0], "node1", backend).dump());
  int calls = 0;
  auto run = [&](const kvmscale::app::RunConfig& c) {
    calls++;
    return record_of(c, "node1", backend);
  };
  std::ostringstream log;
  const std::string digest = spec_digest(p.spec);
  EXPECT_EQ(run_cell(dir, "vms-2_r0", digest, kvmscale::app::parse_run_args, run, log),
            CellOutcome::Ran);
  EXPECT_EQ(run_cell(dir, "vms-3_r0", digest, kvmscale::app::parse_run_args, run, log),
            CellOutcome::Ran);
  EXPECT_EQ(calls, 2);
  EXPECT_NE(log.str().find("cells/vms-2_r0.json: run.exec_ns"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("cells/vms-3_r0.json: config.vms"), std::string::npos) << log.str();
  EXPECT_TRUE(fs::exists(dir + "/mismatched/vms-2_r0.json"));
  EXPECT_EQ(load_rows(p.spec, dir).size(), 2u);
}

TEST(SlurmCollect, RunsOnAnotherBackendAreReportedNotMixedIn) {
  TempDir t;
  const std::string dir = t.sub("m");
  MatrixSpec spec = small_spec();
  PreparedMatrix p = prepare_matrix(spec, {dir, false, false}, kvmscale::app::parse_run_args);
  store_matrix(dir, p.spec, "VMX");
  for (size_t i = 0; i < 3; i++)
    kvmscale::app::write_file_atomically(
        p.configs[i].out,
        record_of(p.configs[i], "n" + std::to_string(i), i == 2 ? "SVM" : "VMX").dump());
  std::vector<std::string> warnings;
  std::vector<RunRow> rows = load_rows(p.spec, dir, &warnings);
  EXPECT_EQ(rows.size(), 2u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cells/vms-3_r0.json: ran on KVM backend SVM (host n2)"),
            std::string::npos)
      << warnings[0];
  // matrix.json without a backend (created on a login node): the most common one is the matrix's.
  store_matrix(dir, p.spec, "unknown");
  warnings.clear();
  EXPECT_EQ(load_rows(p.spec, dir, &warnings).size(), 2u);
  EXPECT_EQ(warnings.size(), 1u);
  EXPECT_NE(write_outputs(p.spec, dir, false).size(), 0u) << "collect reports it too";
  // compare too, pooled or by axis.
  RunSet pooled = load_run_set(dir);
  EXPECT_EQ(pooled.runs.size(), 2u);
  ASSERT_EQ(pooled.skipped.size(), 1u);
  EXPECT_NE(pooled.skipped[0].find("backend SVM"), std::string::npos) << pooled.skipped[0];
  std::vector<std::string> left_out;
  auto groups = load_grouped(dir, {"vms"}, &left_out);
  EXPECT_EQ(groups.count("vms=3"), 0u);
  EXPECT_EQ(left_out.size(), 1u);
}

TEST(SlurmSubmit, SbatchAndSqueueAreCalledAndAMissingSbatchIsNamed) {
  TempDir t;
  const std::string dir = t.sub("m"), bin = t.sub("bin");
  fs::create_directories(bin);
  {
    PathOverride path(t.sub("nothing-here"));
    try {
      submit_cells(dir, "/k", {"c0"}, "d", {}, true);
      ADD_FAILURE() << "submitted without sbatch";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("sbatch: cannot run it"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("Slurm"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::exists(dir + "/slurm/submit-1.sbatch")) << "the script is kept to submit";
  }
  write_exe(bin + "/sbatch", "echo \"$@\" > " + t.sub("sbatch-args") + "\necho '77;cluster'\n");
  write_exe(bin + "/squeue", "printf '77\\n77\\n12\\n'\n");
  PathOverride path(bin);
  Submission s = submit_cells(dir, "/k", {"c0", "c1"}, "d", {}, true);
  EXPECT_EQ(s.job_id, "77");
  EXPECT_EQ(s.script, dir + "/slurm/submit-2.sbatch");
  EXPECT_EQ(slurp(t.sub("sbatch-args")), "--parsable " + s.script + "\n");
  EXPECT_EQ(slurp(dir + "/slurm/jobs.txt"), "77 submit-2.sbatch 2\n");
  EXPECT_EQ(submitted_jobs(dir), (std::vector<std::string>{"77"}));
  EXPECT_EQ(active_jobs({"5", "77"}), (std::vector<std::string>{"77"}));
  // sbatch refusing the job: its message, and no job recorded.
  write_exe(bin + "/sbatch", "echo 'sbatch: error: invalid partition' >&2\nexit 1\n");
  try {
    submit_cells(dir, "/k", {"c0"}, "d", {}, true);
    ADD_FAILURE() << "a refused submission passed";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid partition"), std::string::npos) << e.what();
  }
  EXPECT_EQ(submitted_jobs(dir).size(), 1u);
}

TEST(CompareByHost, HostFactsByPathAndHostsComparedCellByCell) {
  json host = {{"hostname", "a"}, {"kernel", "6.1"}, {"kvm_caps", {{"max_vcpus", 288}}}};
  EXPECT_EQ(host_fact(host, "host"), "a");
  EXPECT_EQ(host_fact(host, "host.kernel"), "6.1");
  EXPECT_EQ(host_fact(host, "host.kvm_caps.max_vcpus"), "288");
  EXPECT_EQ(host_fact(host, "host.microcode"), "(not recorded)");
  EXPECT_TRUE(is_host_key("host.kernel"));
  EXPECT_FALSE(is_host_key("hostile"));

  // Two matrices of one spec, each cell run on two hosts (repeat 4): host b boots twice as slow.
  TempDir t;
  MatrixSpec spec = make_spec({{"vms", "1,2"}, {"guest", "spin"}}, 4, 3);
  std::vector<std::string> dirs = {t.sub("m1"), t.sub("m2")};
  for (const auto& dir : dirs) {
    PreparedMatrix p = prepare_matrix(spec, {dir, false, false}, kvmscale::app::parse_run_args);
    store_matrix(dir, p.spec, "VMX");
    for (size_t i = 0; i < p.cells.size(); i++) {
      const bool on_b = p.cells[i].rep % 2;
      kvmscale::app::write_file_atomically(
          p.configs[i].out, record_of(p.configs[i], on_b ? "b" : "a", "VMX",
                                      (on_b ? 20.0 : 10.0) * p.configs[i].vms + p.cells[i].rep)
                                .dump());
    }
  }
  auto groups = load_by_host(dirs, {"vms", "host"});
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].first, "vms=1");
  ASSERT_EQ(groups[0].second.size(), 2u);
  EXPECT_EQ(groups[0].second[0].label, "host=a");
  EXPECT_EQ(groups[0].second[1].label, "host=b");
  EXPECT_EQ(groups[0].second[0].runs.size(), 4u);  // 2 per matrix
  auto rows = compare_sets(groups[0].second[0], groups[0].second[1], {"boot_max_ms"});
  ASSERT_EQ(rows.size(), 1u);
  // a: reps 0 and 2 (10, 12 ms), b: reps 1 and 3 (21, 23 ms), in each matrix.
  EXPECT_DOUBLE_EQ(rows[0].ratio, 22.0 / 11.0);
  // Any recorded fact groups the same way; one value only leaves nothing to compare.
  EXPECT_EQ(load_by_host(dirs, {"host.kernel"}).front().second.size(), 2u);
  EXPECT_THROW(load_by_host({dirs[0]}, {"host.backend"}), ConfigError);
  EXPECT_THROW(load_by_host(dirs, {"lock", "host"}), ConfigError);  // not an axis
}

namespace {

// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs no more).
bool gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t close = line.rfind(')');
  return close != std::string::npos && line.substr(close + 2, 1) == "Z";
}

}  // namespace

// A hung sbatch or squeue must not hold the command (and the directory lock) for ever: each is
// killed with whatever it started after the timeout, and the error names it and the timeout.
TEST(SlurmSubmit, AHungSbatchOrSqueueIsKilledAfterItsTimeout) {
  TempDir t;
  const std::string dir = t.sub("m"), bin = t.sub("bin");
  fs::create_directories(bin);
  // Each starts a child that inherits its output and sleeps: the whole group must go.
  for (const char* name : {"sbatch", "squeue"})
    write_exe(bin + "/" + name,
              "/bin/sleep 1000 &\necho $! > " + t.sub(std::string(name) + ".pid") + "\nwait\n");
  PathOverride path(bin);
  SbatchOptions o;
  o.call.timeout = milliseconds(300);
  try {
    submit_cells(dir, "/k", {"c0"}, "d", o, true);
    ADD_FAILURE() << "a hung sbatch returned";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("sbatch did not finish within 300ms"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(submitted_jobs(dir).empty());
  try {
    active_jobs({"5"}, {milliseconds(300), nullptr});
    ADD_FAILURE() << "a hung squeue returned";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("squeue did not finish within 300ms"), std::string::npos)
        << e.what();
  }
  for (const char* name : {"sbatch", "squeue"}) {
    pid_t child = std::stoi(slurp(t.sub(std::string(name) + ".pid")));
    for (int i = 0; i < 100 && !gone(child); i++) std::this_thread::sleep_for(milliseconds(50));
    EXPECT_TRUE(gone(child)) << name << "'s child " << child << " still runs";
  }
}
