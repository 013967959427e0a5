// The study commands of the CLI: matrix, compare and scenario.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "app/cli.hpp"
#include "study/slurm.hpp"

namespace kvmscale::study {

struct StudyCommands {
  CLI::App* matrix = nullptr;
  CLI::App* compare = nullptr;
  CLI::App* scenario = nullptr;
  // matrix: run flags as typed, in run-flag order.
  std::vector<std::pair<std::string, CLI::Option*>> run_opts;
  std::map<std::string, std::string> run_values;
  std::map<std::string, bool> run_bools;
  std::vector<std::string> vm_opts;
  uint32_t repeat = 3;
  uint64_t seed = 0;
  std::string out;
  bool resume = false, no_plots = false, dry_run = false, force = false;
  // matrix on Slurm: submit, collect, and what each array task runs
  bool slurm = false, no_submit = false, collect = false;
  std::vector<std::string> sbatch_args;
  uint32_t slurm_throttle = 0;
  std::string slurm_timeout_text = "60s";  // --slurm-timeout, read into slurm_timeout
  std::chrono::milliseconds slurm_timeout = kSlurmTimeout;
  std::string cell, matrix_digest;
  // compare
  std::string path_a, path_b;
  std::vector<std::string> metrics, by;
  std::string by_text;
  bool json = false;
  // scenario
  std::string scenario_name, duration = "3s";
  uint32_t scenario_repeat = 5;
};

void add_study_commands(CLI::App& app, StudyCommands& st);
// Runs the selected study command; returns -1 when none was selected. Throws app::ConfigError
// for bad input.
int run_study_command(StudyCommands& st);

// The three as one app::Subcommand, for the kvmscale binary's entry point.
std::unique_ptr<app::Subcommand> study_subcommands();

}  // namespace kvmscale::study
