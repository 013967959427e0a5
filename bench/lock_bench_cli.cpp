#include "bench/lock_bench_cli.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <iostream>

#include "app/config.hpp"
#include "app/record.hpp"
#include "bench/lock_bench.hpp"
#include "mm/thread_start.hpp"

namespace kvmscale::bench {
namespace {

// --json/--csv must be usable before the benchmark runs, and are refused as run's --out is: an
// existing file is replaced only with --force, and then only a regular file (never a symlink,
// device or directory: the write renames over it).
void check_output(const std::string& path, const std::string& flag, bool force) {
  if (path.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(path, ec);
  if (fs::exists(st)) {
    if (!fs::is_regular_file(st))
      throw app::ConfigError(flag + " " + path + " exists and is not a regular file" +
                             (fs::is_symlink(st) ? " (a symbolic link)" : ""));
    if (!force) throw app::ConfigError(flag + " " + path + " exists; use --force to overwrite it");
  }
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir, ec))
    throw app::ConfigError(flag + ": '" + dir.string() + "' is not a directory");
  if (std::string why = app::output_dir_unusable(dir.string()); !why.empty())
    throw app::ConfigError(flag + ": " + why);
}

// Both files at one path: the second write would replace the first.
void check_distinct(const std::string& json, const std::string& csv) {
  if (json.empty() || csv.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ec1, ec2;
  const fs::path a = fs::weakly_canonical(fs::absolute(json), ec1);
  const fs::path b = fs::weakly_canonical(fs::absolute(csv), ec2);
  if (ec1 || ec2 ? json == csv : a == b)
    throw app::ConfigError("--json and --csv name the same file (" + csv + ")");
}

class BenchLocks final : public app::Subcommand {
 public:
  void add_to(CLI::App& app) override {
    cmd_ = app.add_subcommand("bench-locks",
                              "lock strategies vs Concurrency Kit and std::mutex: latency, "
                              "throughput, fairness, handoff (ratios measured in one run)");
    cmd_->add_option("--reps", opt_.reps, "interleaved repetitions (medians)")
        ->check(CLI::Range(1, 50));
    cmd_->add_option("--threads", opt_.threads,
                     "thread counts, e.g. 1,2,8 (default 1,2,4.. 4x cores)")
        ->delimiter(',')
        ->check(CLI::Range(1, 4096));
    cmd_->add_option("--ms", opt_.throughput_ms, "duration of one throughput cell (ms)")
        ->check(CLI::Range(10, 60000));
    cmd_->add_option("--locks", opt_.only, "only these (e.g. ticket,ck:ticket,mcs,ck:mcs)")
        ->delimiter(',');
    cmd_->add_flag("--quick", quick_, "short run (for smoke tests)");
    cmd_->add_option("--json", json_out_, "write results as JSON");
    cmd_->add_option("--csv", csv_out_, "write results as CSV");
    cmd_->add_flag("--force", force_, "overwrite existing --json/--csv files");
  }

  int run_if_selected() override {
    if (!cmd_ || !*cmd_) return -1;
    check_output(json_out_, "--json", force_);
    check_output(csv_out_, "--csv", force_);
    check_distinct(json_out_, csv_out_);
    if (quick_) {
      opt_.reps = 3;
      opt_.uncontended_ops = 500000;
      opt_.throughput_ms = 50;
      opt_.handoffs = 300;
    }
    auto known = lock_bench_lock_names();
    for (const auto& n : opt_.only)
      if (std::find(known.begin(), known.end(), n) == known.end())
        throw app::ConfigError("--locks: unknown lock '" + n + "'");
    nlohmann::json r;
    try {
      r = run_lock_bench(opt_);
    } catch (const mm::ThreadStartError& e) {  // exit 1; the threads started are joined
      throw mm::ThreadStartError(std::string(e.what()) + "; for bench-locks, give fewer --threads");
    }
    int rc = app::kExitOk;
    // Never lose the results: what cannot be written goes to stdout.
    auto write = [&](const std::string& path, const std::string& text) {
      if (path.empty()) return;
      try {
        // Without --force a file that appeared meanwhile is kept (EEXIST, content to stdout).
        app::write_file_atomically(path, text, force_);
      } catch (const std::exception& e) {
        std::cerr << "kvmscale: could not write " << path << ": " << e.what()
                  << "\nkvmscale: its content follows on stdout\n";
        std::cout << text << std::flush;
        rc = app::kExitFailure;
      }
    };
    write(json_out_, r.dump(2) + "\n");
    write(csv_out_, lock_bench_csv(r));
    return rc;
  }

 private:
  CLI::App* cmd_ = nullptr;
  LockBenchOptions opt_;
  bool quick_ = false, force_ = false;
  std::string json_out_, csv_out_;
};

}  // namespace

std::unique_ptr<app::Subcommand> bench_locks_subcommand() { return std::make_unique<BenchLocks>(); }

}  // namespace kvmscale::bench
