// Run metrics: the scalar numbers a study compares, read out of a run record
// (docs/run-record.md). One definition list drives the CSV columns, plots and comparisons.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvmscale::study {

enum class Better { Lower, Higher, Neither };

struct MetricInfo {
  std::string name;  // CSV column, e.g. "boot_p50_ms"
  std::string unit;
  Better better;
  std::string description;
};

// The built-in metrics, in CSV column order. Guest-published metrics are added per run as
// "guest_<name>_per_s" (sum over VMs divided by the run's execution time), higher is better.
const std::vector<MetricInfo>& builtin_metrics();
// Info for any metric name (built-in or guest_*); unknown names get Better::Neither.
MetricInfo metric_info(const std::string& name);

// Every metric the record supports. A metric is absent when the run has nothing to say about it
// (e.g. boot time when no VM booted, balance counters under --sched host).
std::map<std::string, double> run_metrics(const nlohmann::json& record);

}  // namespace kvmscale::study
