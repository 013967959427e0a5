// Running a matrix as a Slurm job array: one array task per pending cell, each running
// `kvmscale matrix --cell ID --out DIR` on whatever node Slurm picks, all writing into the shared
// DIR (see MatrixDirLock for who may use it at once).
//
// On disk (DIR = --out):
//   DIR/slurm/submit-<n>.sbatch   the script of the n-th submission (its cells listed inside)
//   DIR/slurm/jobs.txt            "<job id> submit-<n>.sbatch <tasks>", one line per submission
//   DIR/slurm/logs/<job>_<task>.out
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvmscale::study {

// How long sbatch or squeue may take before it is killed (--slurm-timeout's default).
inline constexpr std::chrono::milliseconds kSlurmTimeout{60000};

// How sbatch and squeue are run: stopped, with whatever they started (their process group),
// once they take longer than `timeout` or once `stop` turns true (SIGINT/SIGTERM); either is
// then a std::runtime_error naming the program.
struct SlurmCall {
  std::chrono::milliseconds timeout = kSlurmTimeout;
  std::function<bool()> stop;
};

struct SbatchOptions {
  std::vector<std::string> args;  // extra sbatch options, e.g. --partition=big (one per line)
  uint32_t throttle = 0;          // at most this many tasks at once (array "%N"); 0: no limit
  SlurmCall call;                 // how sbatch is run
};

// Throws app::ConfigError for what sbatch or the script could not take: a directory or
// executable path with blanks, quotes or '%', an argument that is no option or holds a newline.
void check_sbatch_inputs(const std::string& dir, const std::string& exe, const SbatchOptions& o);

// The sbatch script running `cells` of the matrix in `dir` (absolute) with `exe` (absolute),
// each task checking the matrix is still the one of `digest`.
std::string sbatch_script(const std::string& dir, const std::string& exe,
                          const std::vector<std::string>& cells, const std::string& digest,
                          const SbatchOptions& o);

// Job ids of DIR/slurm/jobs.txt (oldest first).
std::vector<std::string> submitted_jobs(const std::string& dir);
// Of `jobs`, those Slurm still has queued or running (asks squeue; throws std::runtime_error
// when squeue cannot be run, fails or is stopped by `call`).
std::vector<std::string> active_jobs(const std::vector<std::string>& jobs,
                                     const SlurmCall& call = {});

struct Submission {
  std::string script;  // path of the script written
  std::string job_id;  // "" when not submitted
};
// Writes DIR/slurm/submit-<n>.sbatch and, if `submit`, runs `sbatch --parsable` on it and appends
// the job id to DIR/slurm/jobs.txt. Throws std::runtime_error when sbatch is missing, fails or is
// stopped by o.call.
Submission submit_cells(const std::string& dir, const std::string& exe,
                        const std::vector<std::string>& cells, const std::string& digest,
                        const SbatchOptions& o, bool submit);

// Runs `argv` (argv[0] looked up in PATH, in a process group of its own, SIGINT/SIGTERM at their
// defaults) and returns its exit status and stdout+stderr. Throws std::runtime_error naming the
// program when it cannot be started (e.g. not installed) or when `call` stops it.
struct ProgramResult {
  int status = -1;
  std::string out, err;
};
ProgramResult run_program(const std::vector<std::string>& argv, const SlurmCall& call = {});

}  // namespace kvmscale::study
