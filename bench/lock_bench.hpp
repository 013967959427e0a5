// `kvmscale bench-locks`: kvmscale's lock strategies against the same algorithms from
// Concurrency Kit (ck) and std::mutex, measured in one run, reported as ratios.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvmscale::bench {

struct LockBenchOptions {
  int reps = 5;  // interleaved repetitions; medians reported
  uint64_t uncontended_ops = 2000000;
  int throughput_ms = 200;   // per (lock, thread count) cell
  std::vector<int> threads;  // empty: 1, 2, 4, ... up to 4 x host cores
  int handoffs = 2000;
  std::vector<std::string> only;  // restrict to these lock names (empty: all)
};

// Runs everything, prints tables to stdout, returns the results (for --json / --csv).
nlohmann::json run_lock_bench(const LockBenchOptions& opt);
// One CSV row per measurement: test,lock,threads,value,unit,extra.
std::string lock_bench_csv(const nlohmann::json& results);
std::vector<std::string> lock_bench_lock_names();

}  // namespace kvmscale::bench
