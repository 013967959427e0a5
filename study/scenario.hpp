// The study's two experiments as ready-made matrices scaled to the host, with the comparisons
// that make their verdict (docs/scenarios.md).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "study/compare.hpp"
#include "study/matrix.hpp"

namespace kvmscale::study {

struct ScenarioOptions {
  uint32_t host_cpus = 1;
  uint32_t repeat = 5;
  std::string duration = "3s";  // credit-balance: how long the vCPUs spin
  uint64_t seed = 1;
};

struct ScenarioComparison {
  std::string label;                        // e.g. "pinned 1:1: affinity vs xen"
  std::map<std::string, std::string> a, b;  // axis values selecting the two groups
};

struct ScenarioPlan {
  std::string name, description;
  MatrixSpec spec;
  std::vector<ScenarioComparison> comparisons;
  std::vector<std::string> key_metrics;
};

const std::vector<std::string>& scenario_names();  // call-lock, credit-balance
// Throws app::ConfigError for an unknown name.
ScenarioPlan plan_scenario(const std::string& name, const ScenarioOptions& opt);

struct ScenarioVerdict {
  std::string text;
  nlohmann::json json;
};
ScenarioVerdict scenario_verdict(const ScenarioPlan& plan, const std::vector<RunRow>& rows);

}  // namespace kvmscale::study
