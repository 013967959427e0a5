// The matrix runner: the cartesian product of `run` flags given as comma lists, repeated,
// run in a shuffled order, every finished run kept as a record so an interrupted matrix resumes.
//
// On disk (DIR = --out):
//   DIR/matrix.json        the spec (axes, fixed flags, repeat, seed) and the tool version
//   DIR/cells/<id>.json    one run record per finished run (written atomically)
//   DIR/failed/<id>.txt    why a run could not start (retried by --resume)
//   DIR/summary.csv        one row per run, one column per axis and per metric
//   DIR/plots/*.{dat,gp,png,svg}
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "vmm/config.hpp"

namespace kvmscale::study {

struct Axis {
  std::string flag;  // without dashes, e.g. "vms"
  std::vector<std::string> values;
};

inline constexpr uint32_t kMaxRepeat = 1000;   // --repeat's range, for matrix.json too
inline constexpr uint64_t kMaxRuns = 100'000;  // runs in one matrix without --force

struct MatrixSpec {
  std::vector<Axis> axes;                                  // flags with 2+ values
  std::vector<std::pair<std::string, std::string>> fixed;  // one value ("" for boolean flags)
  uint32_t repeat = 1;
  uint64_t seed = 0;

  // Same axes, fixed flags and repeat (the seed may differ).
  bool same_experiment(const MatrixSpec& o) const;
  nlohmann::json to_json() const;
  // Validated as strictly as the command line (throws vmm::ConfigError).
  static MatrixSpec from_json(const nlohmann::json& j);
  void validate() const;       // throws vmm::ConfigError
  uint64_t run_count() const;  // cells x repeat, saturating (computed without expanding)
};

// Splits a flag's command-line value into axis values. Commas separate values, except where one
// value itself holds commas: a `--lock` with CLASS=NAME parts and a `--vcpu-pin` pCPU list stay
// whole; a ';' anywhere makes ';' the separator (e.g. "--lock call=mcs,runq=ticket;ticket").
// `--guest-arg` and `--vm` are never split.
std::vector<std::string> split_axis(const std::string& flag, const std::string& text);

// Builds a spec from flag -> value as typed (boolean flags map to "").
MatrixSpec make_spec(const std::vector<std::pair<std::string, std::string>>& flags, uint32_t repeat,
                     uint64_t seed);

struct Cell {
  std::map<std::string, std::string> values;  // axis flag -> value
  uint32_t rep = 0;                           // 0-based repetition
  std::string id;                             // file name stem, e.g. "vms-4_lock-mcs_r0"
};

// A run record that parses and was not interrupted (the only kind a matrix keeps or compares).
bool read_finished_record(const std::string& path, nlohmann::json& out, std::string* why = nullptr);
// Why `r` is not a usable run record ("" if it is): schema_version from
// kOldestRecordSchemaVersion to this build's, run/summary/config objects, the summary's counters
// numbers.
std::string record_problem(const nlohmann::json& r);
// DIR/matrix.json exists / its spec (throws vmm::ConfigError when missing or malformed).
bool holds_matrix(const std::string& dir);
MatrixSpec load_spec(const std::string& dir);

// Every run of the matrix in canonical order (axes vary last-fastest, repetitions innermost).
std::vector<Cell> expand(const MatrixSpec& spec);
// The order runs are executed in: a seeded shuffle, so drift spreads over all cells.
std::vector<size_t> run_order(size_t n, uint64_t seed);
// `run` flags for a cell, e.g. {"--vms", "4", "--lock", "mcs", "--pcpu-bind"}.
std::vector<std::string> cell_args(const MatrixSpec& spec, const Cell& cell);

struct MatrixOptions {
  std::string dir;
  bool resume = false;
  bool plots = true;
};

struct MatrixOutcome {
  size_t total = 0, ran = 0, skipped = 0, failed = 0;
  bool interrupted = false;
  std::vector<std::string> warnings;
};

// Turns run flags into a validated RunConfig (the CLI's parser; throws vmm::ConfigError).
using ConfigFn = std::function<vmm::RunConfig(const std::vector<std::string>& args)>;
// Runs one configuration and returns its record (vmm::run_testbed; throws vmm::RunError).
using RunFn = std::function<nlohmann::json(const vmm::RunConfig&)>;
// Polled between runs: true stops the matrix (SIGINT).
using StopFn = std::function<bool()>;

// Validates every cell before running any (throws vmm::ConfigError), then runs what is missing.
// Progress goes to `log` (one line per run: k of n, elapsed, ETA).
MatrixOutcome run_matrix(const MatrixSpec& spec, const MatrixOptions& opt, const ConfigFn& config,
                         const RunFn& run, const StopFn& stop, std::ostream& log);

// One finished run of a matrix, as read back from DIR/cells.
struct RunRow {
  std::string id;
  std::map<std::string, std::string> values;
  uint32_t rep = 0;
  std::map<std::string, double> metrics;
  std::string record_file;  // relative to DIR
};
std::vector<RunRow> load_rows(const MatrixSpec& spec, const std::string& dir);
// Metrics present in any row: built-in ones in definition order, then guest metrics.
std::vector<std::string> metric_columns(const std::vector<RunRow>& rows);
// The CSV text: id, rep, one column per axis, one per metric present in any row (built-in
// metrics in definition order, then guest metrics), record file.
std::string summary_csv(const MatrixSpec& spec, const std::vector<RunRow>& rows);
// Writes summary.csv and the plots; returns warnings (e.g. gnuplot missing).
std::vector<std::string> write_outputs(const MatrixSpec& spec, const std::string& dir, bool plots);

}  // namespace kvmscale::study
