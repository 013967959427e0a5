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

// Why `record` is not shaped as the study reads it ("" if it is), naming the field, e.g.
// "sched.pcpus is 5, not an array" or "run.exec_ns is -1, not a number >= 0": one table
// (kRecordFields in metrics.cpp) of every field the readers use, with its type and range.
std::string record_shape_problem(const nlohmann::json& record);

// Every metric the record supports. A metric is absent when the run has nothing to say about it
// (e.g. boot time when no VM booted, balance counters under --sched host). Throws
// std::invalid_argument (record_shape_problem's text) for a record of the wrong shape.
std::map<std::string, double> run_metrics(const nlohmann::json& record);

}  // namespace kvmscale::study
