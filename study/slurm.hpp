// Running a matrix as a Slurm job array: one array task per pending cell, each running
// `kvmscale matrix --cell ID --out DIR` on whatever node Slurm picks, all writing into the shared
// DIR (see MatrixDirLock for who may use it at once).
//
// On disk (DIR = --out):
//   DIR/slurm/submit-<n>.sbatch   the script of the n-th submission (its cells listed inside)
//   DIR/slurm/jobs.txt            "<job id> submit-<n>.sbatch <tasks>", one line per submission
//   DIR/slurm/logs/<job>_<task>.out
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvmscale::study {

struct SbatchOptions {
  std::vector<std::string> args;  // extra sbatch options, e.g. --partition=big (one per line)
  uint32_t throttle = 0;          // at most this many tasks at once (array "%N"); 0: no limit
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
// Of `jobs`, those Slurm still has queued or running (asks squeue; throws app::RunError-like
// std::runtime_error when squeue cannot be run).
std::vector<std::string> active_jobs(const std::vector<std::string>& jobs);

struct Submission {
  std::string script;  // path of the script written
  std::string job_id;  // "" when not submitted
};
// Writes DIR/slurm/submit-<n>.sbatch and, if `submit`, runs `sbatch --parsable` on it and appends
// the job id to DIR/slurm/jobs.txt. Throws std::runtime_error when sbatch is missing or fails.
Submission submit_cells(const std::string& dir, const std::string& exe,
                        const std::vector<std::string>& cells, const std::string& digest,
                        const SbatchOptions& o, bool submit);

// Runs `argv` (argv[0] looked up in PATH) and returns its exit status and stdout+stderr.
// Throws std::runtime_error naming the program when it cannot be started (e.g. not installed).
struct ProgramResult {
  int status = -1;
  std::string out, err;
};
ProgramResult run_program(const std::vector<std::string>& argv);

}  // namespace kvmscale::study
