#include "study/study_cli.hpp"

#include <sched.h>
#include <signal.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "app/cli.hpp"
#include "app/procs.hpp"
#include "app/record.hpp"
#include "app/settings.hpp"
#include "app/testbed.hpp"
#include "app/text.hpp"
#include "study/compare.hpp"
#include "study/matrix.hpp"
#include "study/scenario.hpp"
#include "study/slurm.hpp"
#include "vmm/kick.hpp"
#include "vmm/regular_file.hpp"

namespace kvmscale::study {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string stamp() {
  std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y%m%d-%H%M%S", std::localtime(&t));
  return b;
}

// CLI11 would read -1 into a uint64_t as 2^64-1: accept what --guest-arg accepts.
CLI::Validator whole_number() {
  return CLI::Validator(
      [](std::string& v) {
        try {
          app::parse_u64(v);
          return std::string();
        } catch (const app::ConfigError&) {
          return std::string("must be a whole number >= 0");
        }
      },
      "UINT");
}

CLI::Validator decimal_count() {
  return CLI::Validator([](std::string& v) { return app::decimal_count_error(v); }, "");
}

// JSON escapes control bytes itself; a path that is not UTF-8 (e.g. a label) is shown with
// U+FFFD where its bytes are not text, rather than ending the command.
std::string json_text(const json& j) {
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

uint64_t random_seed() { return std::random_device{}() & 0xffffffffu; }

bool stop_requested() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGINT) || sigismember(&pending, SIGTERM);
}

uint32_t allowed_host_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return uint32_t(std::max(1, CPU_COUNT(&set)));
}

void add_matrix_options(CLI::App& m, StudyCommands& st) {
  using Arity = app::Setting::Arity;
  for (const app::Setting& f : app::run_settings()) {  // the run's settings that can be axes
    if (f.axis == app::AxisSplit::None) continue;
    const std::string name = "--" + f.flag;
    CLI::Option* o;
    if (f.arity == Arity::Flag)
      o = m.add_flag(name, st.run_bools[f.flag], f.help);
    else if (f.arity == Arity::Repeated)  // --vm
      o = m.add_option(name, st.vm_opts, f.help + " (fixed, may repeat)");
    else
      o = m.add_option(
          name, st.run_values[f.flag],
          f.help + (f.axis == app::AxisSplit::Whole ? " (fixed)" : " [axis: a,b,...]"));
    st.run_opts.emplace_back(f.flag, o);
  }
  m.add_option("--repeat", st.repeat, "runs per cell")
      ->check(decimal_count())
      ->check(CLI::Range(1u, kMaxRepeat))
      ->capture_default_str();
  m.add_option("--seed", st.seed, "seed of the shuffled run order (default: random, recorded)")
      ->check(whole_number());
  m.add_option("--out", st.out, "matrix directory (default results/matrix-<time>)");
  m.add_flag("--resume", st.resume, "finish the matrix in --out, skipping finished runs");
  m.add_flag("--no-plots", st.no_plots, "write the CSV only");
  m.add_flag("--dry-run", st.dry_run, "list the runs in execution order and exit");
  m.add_flag("--force", st.force,
             "run a matrix of more than " + std::to_string(kMaxRuns) + " runs");
  m.add_flag("--slurm", st.slurm,
             "submit the runs not finished yet as one Slurm job array (one task per run) instead "
             "of running them here; with --resume, submit what is missing");
  m.add_option("--sbatch-arg", st.sbatch_args,
               "--slurm: an sbatch option for every task, e.g. --sbatch-arg=--partition=big "
               "(may repeat)")
      ->allow_extra_args(false);
  m.add_option("--slurm-throttle", st.slurm_throttle,
               "--slurm: at most N tasks at once (the array's %N; 0: no limit)")
      ->check(CLI::Range(0u, 1000000u));
  m.add_flag("--no-submit", st.no_submit, "--slurm: write DIR/slurm/ but do not call sbatch");
  m.add_option("--slurm-timeout", st.slurm_timeout_text,
               "--slurm, --collect: how long sbatch or squeue may take before it is stopped "
               "(the command then fails)")
      ->capture_default_str();
  m.add_flag("--collect", st.collect,
             "write the CSV and plots of --out DIR from the runs finished so far and say what is "
             "missing (while Slurm tasks still run)");
  m.add_option("--cell", st.cell, "run only this cell of the matrix in --out (a Slurm task)");
  m.add_option("--matrix-digest", st.matrix_digest,
               "--cell: refuse unless --out still holds the matrix of this digest");
}

std::vector<std::pair<std::string, std::string>> given_flags(const StudyCommands& st) {
  std::vector<std::pair<std::string, std::string>> flags;
  for (const auto& [name, opt] : st.run_opts) {
    if (opt->count() == 0) continue;
    if (name == "vm") continue;  // in vm_opts, one entry per occurrence
    auto b = st.run_bools.find(name);
    flags.emplace_back(name, b != st.run_bools.end() ? "" : st.run_values.at(name));
  }
  return flags;
}

void print_dry_run(const MatrixSpec& spec, std::ostream& os) {
  std::vector<Cell> cells = expand(spec);
  os << cells.size() << " runs (" << spec.axes.size() << " axes, repeat " << spec.repeat
     << ", seed " << spec.seed << "), in execution order:\n";
  for (size_t i : run_order(cells.size(), spec.seed)) {
    os << "  " << cells[i].id << ":";
    for (const auto& a : cell_args(spec, cells[i])) os << " " << a;
    os << "\n";
  }
}

const char* const kStoppedWhileChecking =
    "interrupted while checking the runs: nothing was written or run\n";

// `extra_files`: written with matrix.json once every run is checked (a scenario's settings).
int execute_matrix(const MatrixSpec& spec, const StudyCommands& st, const std::string& dir,
                   std::vector<std::pair<std::string, std::string>> extra_files = {}) {
  // Refuse before expanding: validating millions of runs would take tens of minutes.
  if (spec.run_count() > kMaxRuns && !st.force)
    throw app::ConfigError("the matrix has " + std::to_string(spec.run_count()) +
                           " runs, over the limit of " + std::to_string(kMaxRuns) +
                           "; use --force if you mean it");
  if (st.dry_run) {
    check_cells(spec, dir, app::parse_run_args);  // what the matrix would refuse, refused here
    std::ostringstream plan;
    print_dry_run(spec, plan);
    std::cout << app::printable(plan.str(), true);
    return app::kExitOk;
  }
  vmm::install_kick_signal();
  app::block_stop_signals();
  MatrixOptions opt{dir, st.resume, !st.no_plots, std::move(extra_files)};
  std::cerr << "matrix: " << expand(spec).size() << " runs into " << dir << " (seed " << spec.seed
            << ")\n";
  MatrixOutcome o =
      run_matrix(spec, opt, app::parse_run_args, app::run_planned, stop_requested, std::cerr);
  if (!o.started) {
    std::cerr << kStoppedWhileChecking;
    return app::kExitInterrupted;
  }
  for (const auto& w : o.warnings) std::cerr << "warning: " << w << "\n";
  std::cerr << "matrix: " << o.ran << " ran, " << o.skipped << " already done, " << o.failed
            << " failed" << (o.failed ? " (see " + dir + "/failed/)" : "") << ", of " << o.total
            << "\n"
            << "summary: " << dir << "/summary.csv"
            << (st.no_plots ? "" : ", plots: " + dir + "/plots/") << "\n";
  if (o.interrupted) {
    std::cerr << "interrupted: finished runs are kept; continue with --resume --out " << dir
              << "\n";
    return app::kExitInterrupted;
  }
  return o.failed ? app::kExitFailure : app::kExitOk;
}

// DIR/scenario.json: what a scenario was started with, so --resume (of the scenario or of its
// matrix) rebuilds the same plan and writes the verdict.
const char* const kScenarioFile = "scenario.json";

json scenario_settings(const std::string& name, const ScenarioOptions& so) {
  return {{"name", name},
          {"host_cpus", so.host_cpus},
          {"repeat", so.repeat},
          {"duration", so.duration},
          {"seed", so.seed}};
}

// The stored settings of the scenario in `dir`; false if `dir` holds none.
bool load_scenario_settings(const std::string& dir, std::string& name, ScenarioOptions& so) {
  const std::string file = (fs::path(dir) / kScenarioFile).string();
  if (!vmm::path_exists(file)) return false;
  json j;
  try {
    j = json::parse(vmm::read_regular_file(file), nullptr, false);
  } catch (const vmm::FileError& e) {
    throw app::ConfigError(e.what());
  }
  try {
    name = j.at("name").get<std::string>();
    so.host_cpus = j.at("host_cpus").get<uint32_t>();
    so.repeat = j.at("repeat").get<uint32_t>();
    so.duration = j.at("duration").get<std::string>();
    so.seed = j.at("seed").get<uint64_t>();
  } catch (const json::exception& e) {
    throw app::ConfigError(dir + "/" + kScenarioFile + " is damaged: " + e.what());
  }
  return true;
}

void write_verdict(const ScenarioPlan& plan, const std::string& dir) {
  ScenarioVerdict v = scenario_verdict(plan, load_rows(plan.spec, dir));
  app::write_file_atomically((fs::path(dir) / "verdict.txt").string(), v.text);
  app::write_file_atomically((fs::path(dir) / "verdict.json").string(), v.json.dump(2) + "\n");
  std::cout << app::printable(v.text + "verdict: " + dir + "/verdict.txt\n", true);
}

// `matrix --cell ID --out DIR`: one run of the matrix in DIR, as a Slurm array task runs it.
int do_cell(const StudyCommands& st) {
  vmm::install_kick_signal();
  app::block_stop_signals();
  CellOutcome o =
      run_cell(st.out, st.cell, st.matrix_digest, app::parse_run_args, app::run_planned, std::cerr);
  return o == CellOutcome::Interrupted ? app::kExitInterrupted : app::kExitOk;
}

// How sbatch and squeue are run: --slurm-timeout, and SIGINT/SIGTERM (blocked from here on).
SlurmCall slurm_call(const StudyCommands& st) {
  app::block_stop_signals();
  return {st.slurm_timeout, stop_requested};
}

// The Slurm jobs of DIR still queued or running, "" when none or when squeue is not at hand
// (said as a warning when it is there but fails).
std::string active_jobs_note(const std::string& dir, const SlurmCall& call) {
  std::vector<std::string> jobs = submitted_jobs(dir);
  if (jobs.empty()) return {};
  try {
    std::string s;
    for (const auto& j : active_jobs(jobs, call)) s += (s.empty() ? "" : ", ") + j;
    return s;
  } catch (const std::exception& e) {
    if (std::string(e.what()).find("cannot run it") == std::string::npos)
      std::cerr << "warning: " << e.what() << "\n";
    return {};
  }
}

// `matrix --collect --out DIR`: CSV and plots from what finished, and what is still missing.
int do_collect(const StudyCommands& st) {
  if (!holds_matrix(st.out)) throw app::ConfigError(st.out + " holds no matrix (no matrix.json)");
  MatrixDirLock lock(st.out, MatrixDirLock::Mode::Shared);
  MatrixSpec spec = load_spec(st.out);
  std::vector<Cell> cells = expand(spec);
  std::vector<std::string> warnings = write_outputs(spec, st.out, !st.no_plots);
  size_t in_csv = load_rows(spec, st.out).size(), failed = 0;
  for (const Cell& c : cells) failed += fs::exists(fs::path(st.out) / "failed" / (c.id + ".txt"));
  for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
  std::cerr << "collect: " << in_csv << " of " << cells.size() << " runs in " << st.out
            << "/summary.csv";
  if (failed) std::cerr << ", " << failed << " failed (see " << st.out << "/failed/)";
  std::cerr << "\n";
  if (std::string active = active_jobs_note(st.out, slurm_call(st)); !active.empty())
    std::cerr << "collect: Slurm job(s) " << active << " still queued or running\n";
  else if (in_csv < cells.size())
    std::cerr << "collect: submit the missing runs with: kvmscale matrix --resume --slurm --out "
              << st.out << "\n";
  return stop_requested() ? app::kExitInterrupted : app::kExitOk;
}

// `matrix ... --slurm`: validate the whole matrix, then one array task per run not finished.
int submit_matrix(const MatrixSpec& spec, const StudyCommands& st, const std::string& dir_in) {
  if (spec.run_count() > kMaxRuns && !st.force)
    throw app::ConfigError("the matrix has " + std::to_string(spec.run_count()) +
                           " runs, over the limit of " + std::to_string(kMaxRuns) +
                           "; use --force if you mean it");
  const std::string dir = fs::absolute(dir_in).lexically_normal().string();
  const std::string exe = fs::canonical("/proc/self/exe").string();
  SbatchOptions so{st.sbatch_args, st.slurm_throttle, slurm_call(st)};
  check_sbatch_inputs(dir, exe, so);
  // Checked before the lock creates DIR: a matrix refused or stopped here writes nothing.
  CheckedCells checked = check_cells(spec, dir, app::parse_run_args, stop_requested);
  if (checked.stopped) {
    std::cerr << kStoppedWhileChecking;
    return app::kExitInterrupted;
  }
  MatrixDirLock lock(dir, MatrixDirLock::Mode::Exclusive);
  // Held through sbatch: no second submission races this one; tasks wait for it (run_cell).
  if (std::vector<std::string> jobs = submitted_jobs(dir); !jobs.empty() && !st.no_submit) {
    std::vector<std::string> active = active_jobs(jobs, so.call);
    if (!active.empty())
      throw app::ConfigError("Slurm job " + active.front() + " of " + dir +
                             " is still queued or running: wait for it (squeue) or scancel it, "
                             "then submit what is missing");
  }
  PreparedMatrix p = prepare_matrix(spec, {dir, st.resume, !st.no_plots}, std::move(checked));
  for (const auto& w : p.warnings) std::cerr << "warning: " << w << "\n";
  const std::vector<std::string> pending = p.pending_ids();
  if (pending.empty()) {
    for (const auto& w : write_outputs(p.spec, dir, !st.no_plots))
      std::cerr << "warning: " << w << "\n";
    std::cerr << "matrix: all " << p.cells.size() << " runs are finished, nothing to submit; "
              << "summary: " << dir << "/summary.csv\n";
    return app::kExitOk;
  }
  Submission sub;
  try {
    sub = submit_cells(dir, exe, pending, spec_digest(p.spec), so, !st.no_submit);
  } catch (const std::runtime_error& e) {
    if (!stop_requested()) throw;
    std::cerr << "kvmscale: " << e.what() << "\ninterrupted: see squeue whether the job was "
              << "submitted before submitting again\n";
    return app::kExitInterrupted;
  }
  std::cerr << "matrix: " << pending.size() << " of " << p.cells.size() << " runs in " << sub.script
            << "\n";
  if (sub.job_id.empty())
    std::cerr << "not submitted (--no-submit): sbatch " << sub.script << "\n";
  else
    std::cout << sub.job_id << "\n";
  std::cerr << (sub.job_id.empty() ? "" : "submitted as Slurm job " + sub.job_id + "; ")
            << "when it is done: kvmscale matrix --collect --out " << dir << "\n";
  return app::kExitOk;
}

// --cell, --collect and the Slurm-only flags each belong to one mode of `matrix`.
void check_matrix_modes(const StudyCommands& st, bool run_flags_given) {
  auto used = [&](const char* name) { return st.matrix->count(name) > 0; };
  const bool slurm_only = used("--sbatch-arg") || used("--slurm-throttle") || used("--no-submit");
  if (slurm_only && !st.slurm)
    throw app::ConfigError("--sbatch-arg, --slurm-throttle and --no-submit need --slurm");
  if (used("--slurm-timeout") && !st.slurm && !st.collect)
    throw app::ConfigError("--slurm-timeout needs --slurm or --collect");
  if (used("--matrix-digest") && st.cell.empty())
    throw app::ConfigError("--matrix-digest needs --cell");
  if (!st.cell.empty() || st.collect) {
    const char* mode = st.collect ? "--collect" : "--cell";
    if (st.out.empty()) throw app::ConfigError(std::string(mode) + " needs --out DIR");
    if (run_flags_given || st.resume || st.slurm || st.dry_run || (st.collect && !st.cell.empty()))
      throw app::ConfigError(std::string(mode) +
                             " takes the matrix from --out: no run flags, --resume, --slurm, "
                             "--dry-run or other mode");
  }
}

int do_matrix(StudyCommands& st) {
  auto flags = given_flags(st);
  check_matrix_modes(st, !flags.empty() || !st.vm_opts.empty());
  uint64_t timeout_ns = 0;
  try {
    timeout_ns = app::parse_duration_ns(st.slurm_timeout_text);
  } catch (const app::ConfigError& e) {
    throw app::ConfigError(std::string("--slurm-timeout: ") + e.what());
  }
  if (timeout_ns < 1000000) throw app::ConfigError("--slurm-timeout must be at least 1ms");
  st.slurm_timeout = std::chrono::milliseconds(timeout_ns / 1000000);
  if (!st.cell.empty()) return do_cell(st);
  if (st.collect) return do_collect(st);
  if (st.resume && st.out.empty()) throw app::ConfigError("--resume needs --out DIR");
  const std::string dir = st.out.empty() ? "results/matrix-" + stamp() : st.out;
  MatrixSpec spec;
  if (st.resume && flags.empty() && st.vm_opts.empty()) {
    spec = load_spec(dir);  // `matrix --resume --out DIR` alone continues what is there
  } else {
    spec = make_spec(flags, st.repeat, st.seed ? st.seed : random_seed());
    for (const auto& v : st.vm_opts) spec.fixed.emplace_back("vm", v);
  }
  if (st.slurm && !st.dry_run) return submit_matrix(spec, st, dir);
  int rc = execute_matrix(spec, st, dir);
  std::string scenario;
  ScenarioOptions so;
  if (!st.dry_run && rc != app::kExitInterrupted && load_scenario_settings(dir, scenario, so))
    write_verdict(plan_scenario(scenario, so), dir);
  return rc;
}

// Every metric asked for by --metrics must exist on both sides somewhere.
void check_metrics(const std::vector<std::string>& wanted,
                   const std::vector<std::vector<MetricComparison>>& results) {
  for (const auto& m : wanted) {
    bool found = false;
    for (const auto& rows : results)
      for (const auto& r : rows) found = found || r.metric == m;
    if (!found) throw app::ConfigError("--metrics: '" + m + "' is not in both sets");
  }
}

// compare --by host[.FACT][,axis...]: within each group of axis values, the runs of each host
// value against those of the first one met (A's before B's).
int compare_hosts(const StudyCommands& st) {
  std::vector<std::string> dirs = {st.path_a};
  if (!st.path_b.empty()) dirs.push_back(st.path_b);
  std::vector<std::string> left_out;
  auto groups = load_by_host(dirs, st.by, &left_out);
  for (const auto& w : left_out) std::cerr << "compare: left out " << w << "\n";
  json out = json::array();
  std::string text;
  std::vector<std::vector<MetricComparison>> all;
  for (const auto& [key, sets] : groups) {
    for (size_t i = 1; i < sets.size(); i++) {
      auto rows = compare_sets(sets[0], sets[i], st.metrics);
      all.push_back(rows);
      text += "== " + (key.empty() ? std::string() : key + ": ") + sets[0].label + " vs " +
              sets[i].label + "\n" + comparison_text(sets[0], sets[i], rows) + "\n";
      json j = comparison_json(sets[0], sets[i], rows);
      j["group"] = key;
      out.push_back(j);
    }
  }
  check_metrics(st.metrics, all);
  if (st.json)
    std::cout << json_text(json{{"groups", out}});
  else
    std::cout << app::printable(text, true);
  return app::kExitOk;
}

int do_compare(StudyCommands& st) {
  st.by = st.by_text.empty() ? std::vector<std::string>{} : app::split_list(st.by_text);
  const bool by_host = std::any_of(st.by.begin(), st.by.end(), is_host_key);
  if (by_host) return compare_hosts(st);
  if (st.path_b.empty())
    throw app::ConfigError("compare needs two sets A B (one is enough with --by host...)");
  if (st.by.empty()) {
    RunSet a = load_run_set(st.path_a), b = load_run_set(st.path_b);
    for (const RunSet* set : {&a, &b})
      for (const auto& why : set->skipped) std::cerr << "compare: skipped " << why << "\n";
    auto rows = compare_sets(a, b, st.metrics);
    check_metrics(st.metrics, {rows});
    if (rows.empty()) throw app::ConfigError("no metric is present in both sets");
    if (st.json)
      std::cout << json_text(comparison_json(a, b, rows));
    else
      std::cout << app::printable(comparison_text(a, b, rows), true);
    return app::kExitOk;
  }
  // Cell by cell: the runs of each group of A against the same group of B.
  std::vector<std::string> left_out;
  auto ga = load_grouped(st.path_a, st.by, &left_out),
       gb = load_grouped(st.path_b, st.by, &left_out);
  for (const auto& w : left_out) std::cerr << "compare: left out " << w << "\n";
  json groups = json::array();
  std::string text;
  std::vector<std::vector<MetricComparison>> all;
  for (const auto& [key, a] : ga) {
    auto it = gb.find(key);
    if (it == gb.end()) continue;
    auto rows = compare_sets(a, it->second, st.metrics);
    all.push_back(rows);
    text += "== " + key + "\n" + comparison_text(a, it->second, rows) + "\n";
    json j = comparison_json(a, it->second, rows);
    j["group"] = key;
    groups.push_back(j);
  }
  if (groups.empty()) throw app::ConfigError("--by: no group is present in both matrices");
  check_metrics(st.metrics, all);
  if (st.json)
    std::cout << json_text(json{{"groups", groups}});
  else
    std::cout << app::printable(text, true);
  return app::kExitOk;
}

int do_scenario(StudyCommands& st) {
  ScenarioOptions so;
  so.host_cpus = allowed_host_cpus();
  so.repeat = st.scenario_repeat;
  so.duration = st.duration;
  so.seed = st.seed ? st.seed : random_seed();
  if (st.resume && st.out.empty()) throw app::ConfigError("--resume needs --out DIR");
  const std::string dir =
      st.out.empty() ? "results/scenario-" + st.scenario_name + "-" + stamp() : st.out;
  if (st.resume) {
    std::string stored;
    if (!load_scenario_settings(dir, stored, so))
      throw app::ConfigError(dir + " holds no scenario (no " + kScenarioFile + ")");
    if (stored != st.scenario_name)
      throw app::ConfigError(dir + " holds scenario " + stored + ", not " + st.scenario_name);
    std::cerr << "scenario: resuming with the stored settings (repeat " << so.repeat
              << ", duration " << so.duration << ", " << so.host_cpus << " host CPUs)\n";
  }
  ScenarioPlan plan = plan_scenario(st.scenario_name, so);
  std::cerr << "scenario " << plan.name << ": " << plan.description << "\n";
  std::vector<std::pair<std::string, std::string>> settings;
  if (!st.resume && !st.dry_run) {
    if (holds_matrix(dir) || fs::exists(fs::path(dir) / kScenarioFile))
      throw app::ConfigError(dir +
                             " already holds a scenario: use --resume to finish it, or "
                             "another --out");
    // Written with matrix.json, once every run is checked: a refused scenario writes nothing.
    settings.emplace_back(kScenarioFile, scenario_settings(st.scenario_name, so).dump(2) + "\n");
  }
  int rc = execute_matrix(plan.spec, st, dir, std::move(settings));
  if (st.dry_run || rc == app::kExitInterrupted) return rc;
  write_verdict(plan, dir);
  return rc;
}

}  // namespace

void add_study_commands(CLI::App& app, StudyCommands& st) {
  st.matrix = app.add_subcommand(
      "matrix",
      "run the cartesian product of run flags given as comma lists (e.g. --vms 1,2,4,8 --lock "
      "ticket,mcs), repeated in shuffled order; CSV summary and gnuplot plots");
  add_matrix_options(*st.matrix, st);
  st.matrix->footer(
      "Axes: any run flag with a comma list. A --lock with CLASS=NAME parts or a --vcpu-pin pCPU "
      "list stays one value; use ';' to separate such values (--lock 'call=mcs;call=ticket').\n"
      "Example: kvmscale matrix --vms 1,2,4 --vcpu-pin none,1:1 --balance xen,affinity --sched "
      "credit --guest spin --duration 3s --repeat 3 --out results/m1");

  st.compare = app.add_subcommand(
      "compare", "compare two run records or matrix directories: medians, B/A, 95% CI, p");
  st.compare->add_option("A", st.path_a, "baseline: a record or a directory of records")
      ->required();
  st.compare->add_option("B", st.path_b,
                         "variant: a record or a directory of records (optional with --by host)");
  st.compare->add_option("--metrics", st.metrics, "only these metrics (comma list)")
      ->delimiter(',')
      ->allow_extra_args(false);  // one comma list: later words stay positional (A, B)
  st.compare->add_option("--by", st.by_text,
                         "compare two matrices group by group over these axes (e.g. vms,lock); "
                         "host, host.kernel, host.cpu_model... (any recorded host fact) compare "
                         "the hosts the runs of one or two matrices ran on");
  st.compare->add_flag("--json", st.json, "print JSON");

  st.scenario = app.add_subcommand(
      "scenario", "run one of the study's experiments, scaled to this host, and print a verdict");
  st.scenario->add_option("name", st.scenario_name, "call-lock or credit-balance")
      ->required()
      ->check(CLI::IsMember(scenario_names()));
  st.scenario->add_option("--repeat", st.scenario_repeat, "runs per variant")
      ->check(decimal_count())
      ->check(CLI::Range(1u, kMaxRepeat))
      ->capture_default_str();
  st.scenario->add_option("--duration", st.duration, "credit-balance: spin time of each run")
      ->capture_default_str();
  st.scenario->add_option("--seed", st.seed, "seed of the shuffled run order")
      ->check(whole_number());
  st.scenario->add_option("--out", st.out, "directory (default results/scenario-NAME-<time>)");
  st.scenario->add_flag("--resume", st.resume, "finish the scenario in --out");
  st.scenario->add_flag("--no-plots", st.no_plots, "write the CSV only");
  st.scenario->add_flag("--dry-run", st.dry_run, "list the runs and exit");
}

int run_study_command(StudyCommands& st) {
  if (st.matrix && *st.matrix) return do_matrix(st);
  if (st.compare && *st.compare) return do_compare(st);
  if (st.scenario && *st.scenario) return do_scenario(st);
  return -1;
}

namespace {
class StudySubcommands final : public app::Subcommand {
 public:
  void add_to(CLI::App& app) override { add_study_commands(app, st_); }
  int run_if_selected() override { return run_study_command(st_); }

 private:
  StudyCommands st_;
};
}  // namespace

std::unique_ptr<app::Subcommand> study_subcommands() {
  return std::make_unique<StudySubcommands>();
}

}  // namespace kvmscale::study
