#include "study/compare.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "app/config.hpp"
#include "study/matrix.hpp"
#include "study/metrics.hpp"
#include "study/stats.hpp"
#include "vmm/regular_file.hpp"

namespace kvmscale::study {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A matrix directory's runs, as load_rows judges its cells; files in cells/ that are no cell of
// the matrix are named too.
void load_matrix_runs(const std::string& dir, RunSet& set) {
  const MatrixSpec spec = load_spec(dir);
  std::vector<std::string> warnings;
  for (RunRow& r : load_rows(spec, dir, &warnings)) set.runs.push_back(std::move(r.metrics));
  std::set<std::string> cells;
  for (const Cell& c : expand(spec)) cells.insert(c.id + ".json");
  std::vector<std::string> others;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(dir) / "cells", ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with(".") && !cells.count(name)) others.push_back(name);
  }
  std::sort(others.begin(), others.end());
  for (const auto& name : others)
    warnings.push_back("cells/" + name + ": not a cell of the matrix");
  for (const auto& w : warnings) set.skipped.push_back((fs::path(dir) / w).string());
}

// Every *.json under `dir` (not a matrix's mismatched/ or failed/), each read as one run.
void load_directory_runs(const std::string& dir, RunSet& set) {
  std::vector<fs::path> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    // A matrix's mismatched/ and failed/ hold runs of other configurations or none at all.
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (it->is_directory(type_ec)) {
      if (name == "mismatched" || name == "failed") it.disable_recursion_pending();
      continue;
    }
    // Whatever else stands there (a FIFO, a device) is named by the reader, not skipped unseen.
    if (it->path().extension() == ".json") files.push_back(it->path());
  }
  if (ec) throw app::ConfigError(dir + ": " + ec.message());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    json r;
    std::string why;
    if (read_finished_record(f, r, &why))
      set.runs.push_back(run_metrics(r));  // the shape was checked: cannot throw
    else
      set.skipped.push_back(f.string() + ": " + why);
  }
}

}  // namespace

RunSet load_run_set(const std::string& path) {
  RunSet set;
  set.label = path;
  std::error_code ec;
  if (!vmm::path_exists(path)) throw app::ConfigError(path + ": no such file or directory");
  if (!fs::is_directory(path, ec)) {
    json r;
    std::string why;
    if (!read_finished_record(path, r, &why))
      throw app::ConfigError(path + " is not a finished run record: " + why);
    set.runs.push_back(run_metrics(r));
    return set;
  }
  if (holds_matrix(path))
    load_matrix_runs(path, set);
  else
    load_directory_runs(path, set);
  if (set.runs.empty()) {
    std::string why = path + " holds no finished run records";
    if (!set.skipped.empty())
      why += " (" + set.skipped.front() +
             (set.skipped.size() > 1 ? ", and " + std::to_string(set.skipped.size() - 1) + " more"
                                     : "") +
             ")";
    throw app::ConfigError(why);
  }
  return set;
}

std::map<std::string, RunSet> load_grouped(const std::string& dir,
                                           const std::vector<std::string>& axes,
                                           std::vector<std::string>* left_out) {
  if (!holds_matrix(dir))
    throw app::ConfigError("--by needs matrix directories: " + dir + " has no matrix.json");
  MatrixSpec spec = load_spec(dir);
  for (const auto& a : axes) {
    bool known = false;
    for (const auto& ax : spec.axes) known = known || ax.flag == a;
    if (!known) throw app::ConfigError("--by " + a + ": not an axis of the matrix in " + dir);
  }
  std::map<std::string, RunSet> groups;
  std::vector<std::string> warnings;
  for (const RunRow& r : load_rows(spec, dir, &warnings)) {
    std::string key;
    for (const auto& a : axes) key += (key.empty() ? "" : " ") + a + "=" + r.values.at(a);
    RunSet& g = groups[key];
    g.label = dir + " [" + key + "]";
    g.runs.push_back(r.metrics);
  }
  if (left_out)
    for (auto& w : warnings) left_out->push_back(dir + "/" + w);
  return groups;
}

bool is_host_key(const std::string& key) { return key == "host" || key.rfind("host.", 0) == 0; }

std::string host_fact(const json& host, const std::string& key) {
  const json* v = &host;
  std::string path = key == "host" ? "hostname" : key.substr(5);
  for (size_t pos = 0; v && pos <= path.size();) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    auto it = v->is_object() ? v->find(part) : v->end();
    v = v->is_object() && it != v->end() ? &*it : nullptr;
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  if (!v || v->is_null()) return "(not recorded)";
  return v->is_string() ? v->get<std::string>() : v->dump();
}

std::vector<std::pair<std::string, std::vector<RunSet>>> load_by_host(
    const std::vector<std::string>& dirs, const std::vector<std::string>& keys,
    std::vector<std::string>* left_out) {
  std::vector<std::pair<std::string, std::vector<RunSet>>> groups;
  for (const auto& dir : dirs) {
    if (!holds_matrix(dir))
      throw app::ConfigError("--by " + keys.front() + " needs matrix directories: " + dir +
                             " has no matrix.json");
    MatrixSpec spec = load_spec(dir);
    for (const auto& k : keys) {
      if (is_host_key(k)) continue;
      bool known = false;
      for (const auto& ax : spec.axes) known = known || ax.flag == k;
      if (!known) throw app::ConfigError("--by " + k + ": not an axis of the matrix in " + dir);
    }
    std::vector<std::string> warnings;
    for (const RunRow& r : load_rows(spec, dir, &warnings)) {
      std::string group, host;
      for (const auto& k : keys) {
        std::string& into = is_host_key(k) ? host : group;
        into += (into.empty() ? "" : " ") + k + "=" +
                (is_host_key(k) ? host_fact(r.host, k) : r.values.at(k));
      }
      auto g = std::find_if(groups.begin(), groups.end(),
                            [&](const auto& e) { return e.first == group; });
      if (g == groups.end()) g = groups.insert(groups.end(), {group, {}});
      auto s = std::find_if(g->second.begin(), g->second.end(),
                            [&](const RunSet& rs) { return rs.label == host; });
      if (s == g->second.end()) s = g->second.insert(g->second.end(), RunSet{host, {}, {}});
      s->runs.push_back(r.metrics);
    }
    if (left_out)
      for (const auto& w : warnings) left_out->push_back(dir + "/" + w);
  }
  std::erase_if(groups, [](const auto& g) { return g.second.size() < 2; });
  if (groups.empty())
    throw app::ConfigError("--by: no group holds runs of two different host values");
  return groups;
}

std::vector<MetricComparison> compare_sets(const RunSet& a, const RunSet& b,
                                           const std::vector<std::string>& only) {
  auto values = [](const RunSet& s, const std::string& m) {
    std::vector<double> v;
    for (const auto& r : s.runs)
      if (auto it = r.find(m); it != r.end()) v.push_back(it->second);
    return v;
  };
  std::vector<std::string> names = only;
  if (names.empty()) {
    std::set<std::string> all;
    for (const auto& r : a.runs)
      for (const auto& [k, v] : r) all.insert(k);
    for (const auto& m : builtin_metrics())
      if (all.erase(m.name)) names.push_back(m.name);
    names.insert(names.end(), all.begin(), all.end());
  }
  std::vector<MetricComparison> out;
  uint64_t seed = 1;
  for (const auto& name : names) {
    std::vector<double> va = values(a, name), vb = values(b, name);
    if (va.empty() || vb.empty()) continue;
    MetricComparison c;
    c.metric = name;
    c.n_a = va.size();
    c.n_b = vb.size();
    c.median_a = median(va);
    c.median_b = median(vb);
    c.ratio = c.median_a != 0 ? c.median_b / c.median_a : (c.median_b == 0 ? 1.0 : std::nan(""));
    Interval ci = bootstrap_ratio_ci(va, vb, 0.95, 10000, seed++);
    c.ci_lo = ci.lo;
    c.ci_hi = ci.hi;
    c.p = mann_whitney(va, vb).p;
    const bool ci_excludes_one = std::isnan(ci.lo) || ci.lo > 1.0 || ci.hi < 1.0;
    c.significant = c.p < 0.05 && ci_excludes_one && c.median_a != c.median_b;
    if (c.significant) {
      Better better = metric_info(name).better;
      bool up = c.median_b > c.median_a;
      c.verdict = better == Better::Neither          ? "changed"
                  : (better == Better::Higher) == up ? "better"
                                                     : "worse";
    }
    out.push_back(c);
  }
  return out;
}

namespace {

std::string fmt(double v, int prec = 3) {
  if (std::isnan(v)) return "n/a";
  char b[48];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}

}  // namespace

std::string comparison_text(const RunSet& a, const RunSet& b,
                            const std::vector<MetricComparison>& rows) {
  std::ostringstream s;
  s << "A: " << a.label << " (" << a.runs.size() << " runs)\n"
    << "B: " << b.label << " (" << b.runs.size() << " runs)\n";
  char line[256];
  std::snprintf(line, sizeof line, "%-26s %12s %12s %8s %19s %8s  %s\n", "metric", "median A",
                "median B", "B/A", "95% CI of B/A", "p", "verdict");
  s << line;
  for (const auto& c : rows) {
    std::string ci = "[" + fmt(c.ci_lo) + ", " + fmt(c.ci_hi) + "]";
    std::snprintf(line, sizeof line, "%-26s %12s %12s %8s %19s %8s  %s\n", c.metric.c_str(),
                  fmt(c.median_a, 4).c_str(), fmt(c.median_b, 4).c_str(), fmt(c.ratio).c_str(),
                  ci.c_str(), fmt(c.p, 2).c_str(), c.significant ? ("* " + c.verdict).c_str() : "");
    s << line;
  }
  // The smallest two-sided exact Mann-Whitney p is 2 / C(m+n, m).
  double combos = 1;
  for (size_t i = 1; i <= a.runs.size(); i++)
    combos = combos * double(b.runs.size() + i) / double(i);
  if (2 / combos >= 0.05)
    s << "note: with " << a.runs.size() << " and " << b.runs.size()
      << " runs nothing can be significant at 5% (use --repeat 4 or more)\n";
  s << "* significant: Mann-Whitney p < 0.05 and the 95% bootstrap interval excludes 1\n";
  return s.str();
}

json comparison_json(const RunSet& a, const RunSet& b, const std::vector<MetricComparison>& rows) {
  auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
  json metrics = json::array();
  for (const auto& c : rows)
    metrics.push_back({{"metric", c.metric},
                       {"n_a", c.n_a},
                       {"n_b", c.n_b},
                       {"median_a", num(c.median_a)},
                       {"median_b", num(c.median_b)},
                       {"ratio", num(c.ratio)},
                       {"ci95", {num(c.ci_lo), num(c.ci_hi)}},
                       {"p", num(c.p)},
                       {"significant", c.significant},
                       {"verdict", c.verdict}});
  return {{"a", {{"label", a.label}, {"runs", a.runs.size()}}},
          {"b", {{"label", b.label}, {"runs", b.runs.size()}}},
          {"metrics", metrics}};
}

}  // namespace kvmscale::study
