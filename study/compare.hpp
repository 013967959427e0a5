// Comparing two sets of runs metric by metric: medians, ratio B/A, its 95% bootstrap confidence
// interval and a Mann-Whitney p-value; a difference is significant when both agree.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvmscale::study {

struct RunSet {
  std::string label;
  std::vector<std::map<std::string, double>> runs;  // metrics of each run
  std::vector<std::string> skipped;                 // "file: why" of files that were not used
};

// A run record file (one run) or a directory: a matrix (its usable runs, as load_rows judges its
// cells: every refused cell file, and any file in cells/ that is no cell, is named in `skipped`)
// or any directory of records (searched recursively; each *.json that is not a finished record
// is named in `skipped`). Throws app::ConfigError when nothing usable is found.
RunSet load_run_set(const std::string& path);

// The finished runs of a matrix directory grouped by their values of `axes` (e.g. {"vms"}):
// "vms=4" -> its runs. Throws app::ConfigError when `dir` is no matrix or an axis is not one of it.
// Cell files load_rows leaves out are named in `left_out`.
std::map<std::string, RunSet> load_grouped(const std::string& dir,
                                           const std::vector<std::string>& axes,
                                           std::vector<std::string>* left_out = nullptr);

// `--by` keys naming a recorded host fact rather than an axis: "host" (the hostname) or
// "host.<field>" with dots into nested objects (host.kernel, host.kvm_caps.max_vcpus, ...).
bool is_host_key(const std::string& key);
// The fact's value in a record's "host" object, as text ("(not recorded)" when absent).
std::string host_fact(const nlohmann::json& host, const std::string& key);

// The runs of the matrix directories `dirs`, grouped by the axis keys of `keys`, each group split
// by the values of its host keys in the order they are first met (dirs in order, then cells):
// "vms=4" -> [{host=a}, {host=b}]. Throws app::ConfigError when a dir is no matrix, an axis key is
// not an axis of every dir, or no group holds runs of two host values. Cell files load_rows
// leaves out are named in `left_out`.
std::vector<std::pair<std::string, std::vector<RunSet>>> load_by_host(
    const std::vector<std::string>& dirs, const std::vector<std::string>& keys,
    std::vector<std::string>* left_out = nullptr);

struct MetricComparison {
  std::string metric;
  size_t n_a = 0, n_b = 0;
  double median_a = 0, median_b = 0;
  double ratio = 0;             // median_b / median_a (NaN when median_a is 0 and median_b not)
  double ci_lo = 0, ci_hi = 0;  // 95% bootstrap interval of the ratio (NaN when undefined)
  double p = 1;                 // Mann-Whitney two-sided
  bool significant = false;     // p < 0.05 and the interval excludes 1
  std::string verdict;          // "better", "worse", "changed" (B vs A) or "" when not significant
};

// Metrics present in both sets; `only` restricts and orders them when not empty.
std::vector<MetricComparison> compare_sets(const RunSet& a, const RunSet& b,
                                           const std::vector<std::string>& only = {});

std::string comparison_text(const RunSet& a, const RunSet& b,
                            const std::vector<MetricComparison>& rows);
nlohmann::json comparison_json(const RunSet& a, const RunSet& b,
                               const std::vector<MetricComparison>& rows);

}  // namespace kvmscale::study
