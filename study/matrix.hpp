// The matrix runner: the cartesian product of `run` flags given as comma lists, repeated,
// run in a shuffled order, every finished run kept as a record so an interrupted matrix resumes.
//
// On disk (DIR = --out):
//   DIR/matrix.json        the spec (axes, fixed flags, repeat, seed), the tool version and the
//                          KVM backend of the host that created it
//   DIR/.lock              flock: exclusive for a matrix run or submission, shared for cell tasks
//   DIR/cells/<id>.json    one run record per finished run (written atomically)
//   DIR/failed/<id>.txt    why a run could not start (retried by --resume)
//   DIR/summary.csv        one row per run, one column per axis and per metric
//   DIR/plots/*.{dat,gp,png,svg}
//   DIR/slurm/             sbatch scripts, jobs.txt (job ids), logs/ (see study/slurm.hpp)
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "app/config.hpp"

namespace kvmscale::study {

struct Axis {
  std::string flag;  // without dashes, e.g. "vms"
  std::vector<std::string> values;
};

inline constexpr uint32_t kMaxRepeat = 1000;   // --repeat's range, for matrix.json too
inline constexpr uint64_t kMaxRuns = 100'000;  // runs in one matrix without --force
// A cell id is the stem of its files' names (cells/<id>.json, written as ".<id>.json.tmp.<pid>"):
// an id longer than this is shortened (see Cell), so that every name fits the 255 bytes of
// NAME_MAX with a 7-digit pid; ids that fit were always kept as they are.
inline constexpr size_t kMaxCellIdBytes = 237;

struct MatrixSpec {
  std::vector<Axis> axes;                                  // flags with 2+ values
  std::vector<std::pair<std::string, std::string>> fixed;  // one value ("" for boolean flags)
  uint32_t repeat = 1;
  uint64_t seed = 0;

  // Same axes, fixed flags and repeat (the seed may differ).
  bool same_experiment(const MatrixSpec& o) const;
  nlohmann::json to_json() const;
  // Validated as strictly as the command line (throws app::ConfigError).
  static MatrixSpec from_json(const nlohmann::json& j);
  void validate() const;       // throws app::ConfigError
  uint64_t run_count() const;  // cells x repeat, saturating (computed without expanding)
};

// Splits a flag's command-line value into axis values by the flag's AxisSplit rule in the settings
// table (app/settings.hpp): commas separate values, except where one value itself holds commas
// (a `--lock` with CLASS=NAME parts, a `--vcpu-pin` pCPU list); a ';' anywhere makes ';' the
// separator (e.g. "--lock call=mcs,runq=ticket;ticket"); `--guest-arg` and `--vm` are never split.
std::vector<std::string> split_axis(const std::string& flag, const std::string& text);

// Builds a spec from flag -> value as typed (boolean flags map to "").
MatrixSpec make_spec(const std::vector<std::pair<std::string, std::string>>& flags, uint32_t repeat,
                     uint64_t seed);

struct Cell {
  std::map<std::string, std::string> values;  // axis flag -> value
  uint32_t rep = 0;                           // 0-based repetition
  // The file name stem, e.g. "vms-4_lock-mcs_r0". One over kMaxCellIdBytes is cut to a readable
  // prefix, '~' and a hash of the cell's values (e.g. "guest-file-...~8c1f0e2a9b3d4c5e_r0"): the
  // same for the same spec, so --resume and Slurm tasks find it; the values themselves are in
  // matrix.json's spec, each record's config and summary.csv.
  std::string id;
};

// A run record that parses, has the shape the study reads and was not interrupted, read from a
// regular file only (vmm/regular_file.hpp: a FIFO or a directory is refused, never waited on).
// `why` gets the reason otherwise, naming the field (e.g. "run.exec_ns is \"x\", not a number
// >= 0") or the file's kind ("not a regular file (a FIFO)").
bool read_finished_record(const std::string& path, nlohmann::json& out, std::string* why = nullptr);
// Why `r` is not a usable run record ("" if it is): schema_version from
// kOldestRecordSchemaVersion to this build's, and every field the study reads of the right type
// and range (record_shape_problem, study/metrics.hpp).
std::string record_problem(const nlohmann::json& r);
// DIR/matrix.json exists / its spec (throws app::ConfigError when missing or malformed).
bool holds_matrix(const std::string& dir);
MatrixSpec load_spec(const std::string& dir);
// The KVM backend recorded in DIR/matrix.json ("" when unknown: created on a host without KVM).
std::string matrix_backend(const std::string& dir);
// Identifies a matrix (its spec with the seed), so a Slurm task can tell that DIR still holds
// the matrix it was submitted for: 16 hex digits (FNV-1a 64 of the spec's JSON).
std::string spec_digest(const MatrixSpec& spec);

// Who uses a matrix directory at once: an flock on DIR/.lock, released by the kernel however the
// process ends. A matrix run, --resume or a Slurm submission takes it Exclusive; the tasks of a
// Slurm job (one cell each, possibly on many nodes) and --collect take it Shared, so they run side
// by side but never while a local run or submission writes the directory. Which matrix a task
// belongs to is checked with spec_digest, not with the lock. A Shared request waits up to `wait`
// for an Exclusive holder to finish (a submission releases it right after sbatch returns).
// Throws app::ConfigError when refused.
class MatrixDirLock {
 public:
  enum class Mode { Exclusive, Shared };
  MatrixDirLock(const std::string& dir, Mode mode,
                std::chrono::milliseconds wait = std::chrono::milliseconds(0));
  ~MatrixDirLock();
  MatrixDirLock(const MatrixDirLock&) = delete;
  MatrixDirLock& operator=(const MatrixDirLock&) = delete;
  void release();

 private:
  int fd_ = -1;
};

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
  // Written into DIR with matrix.json once every cell is checked (a scenario's settings):
  // file name -> content.
  std::vector<std::pair<std::string, std::string>> extra_files = {};
};

struct MatrixOutcome {
  size_t total = 0, ran = 0, skipped = 0, failed = 0;
  bool interrupted = false;
  bool started = true;  // false: stopped while the cells were checked, nothing written
  std::vector<std::string> warnings;
};

// A cell's file as judged by read_cell_run: the one meaning of "a finished run of this cell" that
// --resume, --collect, compare, a Slurm task and the plots share.
struct CellRun {
  enum class State { Missing, Refused, Usable };
  State state = State::Missing;
  std::string why;                        // Refused: the reason, naming the field or file kind
  std::map<std::string, double> metrics;  // Usable: run_metrics of the record
  nlohmann::json host = nlohmann::json::object();  // Usable: the record's host facts
};
// Whether the file at `path` is a usable run of the cell whose configuration is `want`: a finished
// record (read_finished_record) of that configuration (compared as settings: config.KEY names
// the first difference) that ran on KVM backend `backend` ("" accepts any; records naming no
// backend are accepted). Missing when nothing stands at `path`.
CellRun read_cell_run(const std::string& path, const app::RunConfig& want,
                      const std::string& backend);
// read_cell_run for every cell of a matrix in `dir` (config_of(i): cell i's configuration, asked
// only where a file stands). With `backend` "" (matrix.json names none: created where KVM was
// unknown), the most common backend among the usable runs is the matrix's.
std::vector<CellRun> read_cell_runs(const std::string& dir, const std::vector<Cell>& cells,
                                    const std::function<app::RunConfig(size_t)>& config_of,
                                    std::string backend);

// Turns run flags into a validated RunConfig (the CLI's parser; throws app::ConfigError).
using ConfigFn = std::function<app::RunConfig(const std::vector<std::string>& args)>;
// Runs one configuration and returns its record (app::run_planned; throws app::RunError).
using RunFn = std::function<nlohmann::json(const app::RunConfig&)>;
// Polled between runs: true stops the matrix (SIGINT).
using StopFn = std::function<bool()>;

// Every cell of `spec` checked as `run` checks a run before it starts (`config`, then
// app::check_run_inputs: guest files, process plan), and every file a matrix in `dir` writes for
// them checked against dir's file system (NAME_MAX, PATH_MAX). Reads only; needs no lock. Throws
// app::ConfigError naming the cell. `stop` is polled before each cell: once it is true the checks
// end, `stopped` set (SIGINT during the checks of a big matrix).
struct CheckedCells {
  std::vector<Cell> cells;
  std::vector<app::RunConfig> configs;  // one per cell, `out` set to its record file
  bool stopped = false;
};
CheckedCells check_cells(const MatrixSpec& spec, const std::string& dir, const ConfigFn& config,
                         const StopFn& stop = nullptr);

// A matrix directory made ready to run or submit (under an Exclusive MatrixDirLock) from its
// checked cells: the spec checked against DIR/matrix.json (the stored seed kept), matrix.json
// (and opt.extra_files) written, and which cells hold a usable run (read_cell_runs; every other
// file at a cell's place is moved to DIR/mismatched/, named with its reason in `warnings`, and
// the cell runs again).
struct PreparedMatrix {
  MatrixSpec spec;
  std::vector<Cell> cells;
  std::vector<app::RunConfig> configs;  // one per cell, `out` set to its record file
  std::vector<bool> done;
  std::vector<std::string> warnings;
  size_t pending() const;
  // Ids of the cells without a finished run, in run order (what a Slurm submission covers).
  std::vector<std::string> pending_ids() const;
};
PreparedMatrix prepare_matrix(const MatrixSpec& spec, const MatrixOptions& opt,
                              CheckedCells checked);
// The same after check_cells(spec, opt.dir, config).
PreparedMatrix prepare_matrix(const MatrixSpec& spec, const MatrixOptions& opt,
                              const ConfigFn& config);

// Checks every cell before running any (check_cells; throws app::ConfigError) and takes the
// directory's Exclusive lock, then runs what is missing. `stop` is polled during the checks and
// between runs. Progress goes to `log` (one line per run: k of n, elapsed, ETA).
MatrixOutcome run_matrix(const MatrixSpec& spec, const MatrixOptions& opt, const ConfigFn& config,
                         const RunFn& run, const StopFn& stop, std::ostream& log);

enum class CellOutcome { Ran, AlreadyDone, Interrupted };
// One cell of the matrix in DIR, as a Slurm array task runs it: under a Shared lock, checks that
// DIR still holds the matrix of `digest` ("" skips the check) and that this host's KVM backend is
// the matrix's, runs the cell unless it holds a usable run (read_cell_run; a refused file is
// moved to DIR/mismatched/, logged with its reason), and writes its record atomically
// (DIR/failed/<id>.txt, naming the host, when the run fails). Throws app::ConfigError for a wrong
// cell, digest or backend, and what `run` throws when the run fails.
CellOutcome run_cell(const std::string& dir, const std::string& cell_id, const std::string& digest,
                     const ConfigFn& config, const RunFn& run, std::ostream& log,
                     std::chrono::milliseconds lock_wait = std::chrono::seconds(30));

// One finished run of a matrix, as read back from DIR/cells.
struct RunRow {
  std::string id;
  std::map<std::string, std::string> values;
  uint32_t rep = 0;
  std::map<std::string, double> metrics;
  std::string record_file;  // relative to DIR
  nlohmann::json host;      // the record's host facts (hostname, kernel, backend, ...)
};
// The usable runs of the matrix (read_cell_runs against matrix.json's backend); every refused
// cell file is named in `warnings` ("cells/ID.json: why: left out ...") if given.
std::vector<RunRow> load_rows(const MatrixSpec& spec, const std::string& dir,
                              std::vector<std::string>* warnings = nullptr);
// Metrics present in any row: built-in ones in definition order, then guest metrics.
std::vector<std::string> metric_columns(const std::vector<RunRow>& rows);
// The CSV text: id, rep, one column per axis, one per metric present in any row (built-in
// metrics in definition order, then guest metrics), record file.
std::string summary_csv(const MatrixSpec& spec, const std::vector<RunRow>& rows);
// Writes summary.csv and the plots; returns warnings (e.g. gnuplot missing, runs left out).
std::vector<std::string> write_outputs(const MatrixSpec& spec, const std::string& dir, bool plots);

}  // namespace kvmscale::study
