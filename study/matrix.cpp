#include "study/matrix.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "study/metrics.hpp"
#include "study/plots.hpp"
#include "vmm/record.hpp"

namespace kvmscale::study {

namespace fs = std::filesystem;
using nlohmann::json;
using vmm::ConfigError;

bool MatrixSpec::same_experiment(const MatrixSpec& o) const {
  auto key = [](const MatrixSpec& s) {
    json j = s.to_json();
    j.erase("seed");
    return j.dump();
  };
  return key(*this) == key(o);
}

json MatrixSpec::to_json() const {
  json axes_j = json::array();
  for (const auto& a : axes) axes_j.push_back({{"flag", a.flag}, {"values", a.values}});
  json fixed_j = json::array();
  for (const auto& [f, v] : fixed) fixed_j.push_back({{"flag", f}, {"value", v}});
  return {{"axes", axes_j}, {"fixed", fixed_j}, {"repeat", repeat}, {"seed", seed}};
}

MatrixSpec MatrixSpec::from_json(const json& j) {
  try {
    MatrixSpec s;
    for (const auto& a : j.at("axes"))
      s.axes.push_back({a.at("flag").get<std::string>(), a.at("values")});
    for (const auto& f : j.at("fixed"))
      s.fixed.emplace_back(f.at("flag").get<std::string>(), f.at("value").get<std::string>());
    // nlohmann converts -1 or 1e12 to a uint32_t silently: require a JSON unsigned integer.
    const json& repeat = j.at("repeat");
    const json& seed = j.at("seed");
    if (!repeat.is_number_unsigned() || repeat.get<uint64_t>() > kMaxRepeat)
      throw ConfigError("repeat must be a whole number in 1.." + std::to_string(kMaxRepeat));
    if (!seed.is_number_unsigned()) throw ConfigError("seed must be a whole number >= 0");
    s.repeat = repeat.get<uint32_t>();
    s.seed = seed.get<uint64_t>();
    s.validate();
    return s;
  } catch (const json::exception& e) {
    throw ConfigError(std::string("bad matrix spec: ") + e.what());
  }
}

uint64_t MatrixSpec::run_count() const {
  uint64_t n = repeat;
  for (const auto& a : axes) {
    if (a.values.empty()) return 0;
    n = n > UINT64_MAX / a.values.size() ? UINT64_MAX : n * a.values.size();
  }
  return n;
}

void MatrixSpec::validate() const {
  if (repeat < 1 || repeat > kMaxRepeat)
    throw ConfigError("repeat must be in 1.." + std::to_string(kMaxRepeat));
  std::set<std::string> seen;
  auto flag_once = [&](const std::string& flag) {
    if (flag.empty()) throw ConfigError("a flag has an empty name");
    if (!seen.insert(flag).second) throw ConfigError("--" + flag + " given twice");
  };
  for (const auto& a : axes) {
    flag_once(a.flag);
    if (a.values.size() < 2)
      throw ConfigError("axis --" + a.flag + " needs at least 2 values, has " +
                        std::to_string(a.values.size()));
    std::set<std::string> uniq(a.values.begin(), a.values.end());
    if (uniq.size() != a.values.size()) throw ConfigError("--" + a.flag + ": a value is repeated");
    for (const auto& v : a.values)
      if (v.empty()) throw ConfigError("--" + a.flag + ": empty value in list");
  }
  for (const auto& [flag, value] : fixed) flag_once(flag);
}

std::vector<std::string> split_axis(const std::string& flag, const std::string& text) {
  if (flag == "guest-arg" || flag == "vm") return {text};
  if (text.find(';') != std::string::npos) return vmm::split_list(text, ';');
  std::vector<std::string> parts = vmm::split_list(text);
  auto any_of_parts = [&](auto pred) { return std::any_of(parts.begin(), parts.end(), pred); };
  if (flag == "lock" && any_of_parts([](const std::string& p) { return p.find('=') != p.npos; }))
    return {text};
  if (flag == "vcpu-pin" && !any_of_parts([](const std::string& p) {
        return p.empty() || p.find_first_not_of("0123456789") != p.npos;
      }))
    return {text};  // a pCPU list such as 0,1
  return parts;
}

MatrixSpec make_spec(const std::vector<std::pair<std::string, std::string>>& flags, uint32_t repeat,
                     uint64_t seed) {
  MatrixSpec s;
  s.repeat = repeat;
  s.seed = seed;
  if (repeat < 1 || repeat > kMaxRepeat)
    throw ConfigError("--repeat must be in 1.." + std::to_string(kMaxRepeat));
  std::set<std::string> seen;
  for (const auto& [flag, text] : flags) {
    if (!seen.insert(flag).second) throw ConfigError("--" + flag + " given twice");
    std::vector<std::string> values = split_axis(flag, text);
    std::set<std::string> uniq(values.begin(), values.end());
    if (uniq.size() != values.size()) throw ConfigError("--" + flag + ": a value is repeated");
    for (const auto& v : values)
      if (v.empty() && !text.empty()) throw ConfigError("--" + flag + ": empty value in list");
    if (values.size() > 1)
      s.axes.push_back({flag, values});
    else
      s.fixed.emplace_back(flag, text);
  }
  return s;
}

namespace {

std::string slug(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '.')
      out += c;
    else if (c == '%')
      out += "pct";
    else
      out += '-';
  }
  return out.empty() ? "none" : out;
}

}  // namespace

std::string record_problem(const json& r) {
  if (!r.is_object()) return "not a JSON object";
  auto sv = r.find("schema_version");
  if (sv == r.end() || !sv->is_number_integer() ||
      sv->get<int64_t>() < vmm::kOldestRecordSchemaVersion ||
      sv->get<int64_t>() > vmm::kRecordSchemaVersion)
    return "schema_version is not " + std::to_string(vmm::kOldestRecordSchemaVersion) + " to " +
           std::to_string(vmm::kRecordSchemaVersion);
  for (const char* obj : {"run", "summary", "config"}) {
    auto it = r.find(obj);
    if (it == r.end() || !it->is_object()) return std::string("no \"") + obj + "\" object";
  }
  const json& run = r["run"];
  if (!run.contains("interrupted") || !run["interrupted"].is_boolean())
    return "run.interrupted is not a boolean";
  for (const char* key : {"vms", "vms_booted", "vms_crashed", "exits_total"}) {
    auto it = r["summary"].find(key);
    if (it == r["summary"].end() || !it->is_number_unsigned())
      return std::string("summary.") + key + " is not a count";
  }
  return {};
}

bool read_finished_record(const std::string& path, json& out, std::string* why) {
  auto fail = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  std::ifstream in(path);
  if (!in) return fail("cannot be read");
  out = json::parse(in, nullptr, false);
  if (out.is_discarded()) return fail("not JSON");
  if (std::string p = record_problem(out); !p.empty()) return fail(p);
  if (out["run"]["interrupted"].get<bool>()) return fail("an interrupted run");
  return true;
}

bool holds_matrix(const std::string& dir) { return fs::exists(fs::path(dir) / "matrix.json"); }

MatrixSpec load_spec(const std::string& dir) {
  const fs::path file = fs::path(dir) / "matrix.json";
  std::ifstream in(file);
  if (!in) throw ConfigError(dir + " holds no matrix (no matrix.json)");
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("spec"))
    throw ConfigError(file.string() + " is not a matrix spec");
  return MatrixSpec::from_json(j["spec"]);
}

std::vector<Cell> expand(const MatrixSpec& spec) {
  std::vector<Cell> cells;
  std::vector<size_t> idx(spec.axes.size(), 0);
  std::set<std::string> ids;
  while (true) {
    for (uint32_t rep = 0; rep < spec.repeat; rep++) {
      Cell c;
      c.rep = rep;
      for (size_t a = 0; a < spec.axes.size(); a++) {
        const Axis& ax = spec.axes[a];
        c.values[ax.flag] = ax.values[idx[a]];
        c.id += slug(ax.flag) + "-" + slug(ax.values[idx[a]]) + "_";
      }
      c.id += "r" + std::to_string(rep);
      // Distinct values can slug alike ("1:1", "1-1"): disambiguate by position.
      if (!ids.insert(c.id).second) {
        c.id += "_" + std::to_string(cells.size());
        ids.insert(c.id);
      }
      cells.push_back(std::move(c));
    }
    size_t a = spec.axes.size();
    while (a > 0) {
      if (++idx[a - 1] < spec.axes[a - 1].values.size()) break;
      idx[a - 1] = 0;
      a--;
    }
    if (a == 0) break;
  }
  return cells;
}

std::vector<size_t> run_order(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; i++) order[i] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

std::vector<std::string> cell_args(const MatrixSpec& spec, const Cell& cell) {
  std::vector<std::string> args;
  auto add = [&](const std::string& flag, const std::string& value, bool boolean) {
    args.push_back("--" + flag);
    if (!boolean) args.push_back(value);
  };
  for (const auto& [flag, value] : spec.fixed) add(flag, value, value.empty());
  for (const auto& a : spec.axes) add(a.flag, cell.values.at(a.flag), false);
  return args;
}

namespace {

std::string cell_file(const std::string& dir, const Cell& c) {
  return (fs::path(dir) / "cells" / (c.id + ".json")).string();
}

// 12.3s, 4m05s, 1h02m: for progress lines that may span hours.
std::string human_time(double s) {
  char b[32];
  if (s < 60)
    std::snprintf(b, sizeof b, "%.1fs", s);
  else if (s < 3600)
    std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else
    std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, int(s) / 60 % 60);
  return b;
}

std::string describe(const MatrixSpec& spec, const Cell& c) {
  std::string s;
  for (const auto& a : spec.axes) s += a.flag + "=" + c.values.at(a.flag) + " ";
  return s + "rep " + std::to_string(c.rep + 1);
}

}  // namespace

namespace {
// One writer per matrix directory: an flock on DIR/.lock, held while the matrix runs (released by
// the kernel however the process ends). A second matrix or --resume on DIR is refused.
class DirLock {
 public:
  explicit DirLock(const fs::path& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    const std::string path = (dir / ".lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw ConfigError("cannot use " + dir.string() + ": " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      char pid[32] = {};
      ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
      ::close(fd_);
      throw ConfigError(dir.string() + " is in use by another kvmscale (pid " +
                        (n > 0 ? std::string(pid, size_t(n)) : std::string("?")) +
                        "); wait for it or use another --out");
    }
    std::string me = std::to_string(getpid());
    if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) < 0) {
      // the pid is only a hint for the message above
    }
  }
  ~DirLock() { ::close(fd_); }
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  int fd_ = -1;
};
}  // namespace

MatrixOutcome run_matrix(const MatrixSpec& spec_in, const MatrixOptions& opt,
                         const ConfigFn& config, const RunFn& run, const StopFn& stop,
                         std::ostream& log) {
  MatrixSpec spec = spec_in;
  const fs::path dir(opt.dir), spec_file = dir / "matrix.json";
  DirLock lock(dir);
  if (holds_matrix(opt.dir)) {
    if (!opt.resume)
      throw ConfigError(opt.dir +
                        " already holds a matrix: use --resume to finish it, or another --out");
    MatrixSpec old = load_spec(opt.dir);
    if (!old.same_experiment(spec))
      throw ConfigError("--resume: the flags differ from " + spec_file.string() +
                        " (resume with the same flags, or none)");
    spec.seed = old.seed;
  }
  std::vector<Cell> cells = expand(spec);
  // Every cell must be a valid run before any runs: no half-done matrix because of a typo.
  std::vector<vmm::RunConfig> configs;
  for (const Cell& c : cells) {
    try {
      configs.push_back(config(cell_args(spec, c)));
    } catch (const ConfigError& e) {
      throw ConfigError("run " + c.id + ": " + e.what());
    }
  }
  fs::create_directories(dir / "cells");
  json meta = {{"spec", spec.to_json()}, {"tool", vmm::version_string()}, {"runs", cells.size()}};
  vmm::write_file_atomically(spec_file.string(), meta.dump(2) + "\n");

  MatrixOutcome out;
  out.total = cells.size();
  // Temp files of writes a SIGKILL cut short (".<name>.tmp.<pid>"): nobody will finish them.
  for (const auto& e : fs::directory_iterator(dir / "cells")) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 && name[0] == '.' && name.find(".tmp.") != std::string::npos)
      fs::remove(e.path());
  }
  // Which runs are finished: read once (records can be large and matrices long). A record counts
  // only if it is the run of its cell: same configuration (the file name alone proves nothing).
  std::vector<bool> done(cells.size());
  json record;
  for (size_t i = 0; i < cells.size(); i++) {
    const std::string path = cell_file(opt.dir, cells[i]);
    if (!read_finished_record(path, record)) continue;
    vmm::RunConfig want = configs[i];
    want.out = path;
    want.json = false;
    json have = record.value("config", json());
    have.erase("out");
    json expect = want.to_json();
    expect.erase("out");
    if (have != expect) {
      std::error_code ec;
      fs::create_directories(dir / "mismatched", ec);
      fs::path to = dir / "mismatched" / (cells[i].id + ".json");
      for (int n = 1; fs::exists(to, ec); n++)
        to = dir / "mismatched" / (cells[i].id + "." + std::to_string(n) + ".json");
      fs::rename(path, to, ec);
      if (ec) fs::remove(path, ec);  // it must not count as this cell's run either way
      out.warnings.push_back("cells/" + cells[i].id +
                             ".json held a run of another configuration: moved to mismatched/, "
                             "the cell runs again");
      continue;
    }
    done[i] = true;
  }
  out.skipped = size_t(std::count(done.begin(), done.end(), true));
  const size_t todo = cells.size() - out.skipped;
  if (out.skipped) log << "resuming: " << out.skipped << " of " << cells.size() << " runs done\n";
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  size_t k = 0;
  for (size_t i : run_order(cells.size(), spec.seed)) {
    const Cell& c = cells[i];
    if (done[i]) continue;
    const std::string path = cell_file(opt.dir, c);
    if (stop && stop()) {
      out.interrupted = true;
      break;
    }
    k++;
    vmm::RunConfig cfg = configs[i];
    cfg.out = path;
    cfg.json = false;
    const auto r0 = clock::now();
    std::string result;
    try {
      json record = run(cfg);
      if (record["run"].value("interrupted", false)) {
        out.interrupted = true;  // the interrupted run is not kept: it would bias its cell
        break;
      }
      vmm::write_file_atomically(path, record.dump(2) + "\n");
      fs::remove(dir / "failed" / (c.id + ".txt"));
      out.ran++;
      auto m = run_metrics(record);
      std::ostringstream s;
      s << m["vms_booted"] << "/" << record["summary"].value("vms", 0) << " booted";
      if (m.count("boot_max_ms"))
        s << ", boot max " << vmm::format_duration(uint64_t(m["boot_max_ms"] * 1e6));
      result = s.str();
    } catch (const ConfigError&) {
      throw;
    } catch (const std::exception& e) {
      fs::create_directories(dir / "failed");
      vmm::write_file_atomically((dir / "failed" / (c.id + ".txt")).string(),
                                 std::string(e.what()) + "\n");
      out.failed++;
      result = std::string("FAILED: ") + e.what();
    }
    const double run_s = std::chrono::duration<double>(clock::now() - r0).count();
    const double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
    const double eta = elapsed / double(k) * double(todo - k);
    log << "[" << (out.skipped + k) << "/" << cells.size() << "] " << describe(spec, c) << ": "
        << result << " (" << human_time(run_s) << ") | elapsed " << human_time(elapsed) << ", ETA "
        << human_time(eta) << "\n"
        << std::flush;
  }
  for (auto& w : write_outputs(spec, opt.dir, opt.plots)) out.warnings.push_back(std::move(w));
  return out;
}

std::vector<RunRow> load_rows(const MatrixSpec& spec, const std::string& dir) {
  std::vector<RunRow> rows;
  for (const Cell& c : expand(spec)) {
    json record;
    if (!read_finished_record(cell_file(dir, c), record)) continue;
    try {
      rows.push_back({c.id, c.values, c.rep, run_metrics(record), "cells/" + c.id + ".json"});
    } catch (const std::invalid_argument&) {
      // a badly typed record is not a finished run of this cell: left out of CSV and compare
    }
  }
  return rows;
}

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string format_number(double v) {
  std::ostringstream s;
  s.precision(10);
  s << v;
  return s.str();
}

}  // namespace

std::vector<std::string> metric_columns(const std::vector<RunRow>& rows) {
  std::vector<std::string> cols;
  std::set<std::string> present;
  for (const auto& r : rows)
    for (const auto& [k, v] : r.metrics) present.insert(k);
  for (const auto& m : builtin_metrics())
    if (present.erase(m.name)) cols.push_back(m.name);
  for (const auto& k : present) cols.push_back(k);  // guest metrics, sorted
  return cols;
}

std::string summary_csv(const MatrixSpec& spec, const std::vector<RunRow>& rows) {
  std::vector<std::string> metrics = metric_columns(rows);
  std::ostringstream s;
  s << "id,rep";
  for (const auto& a : spec.axes) s << "," << csv_field(a.flag);
  for (const auto& m : metrics) s << "," << m;
  s << ",record\n";
  for (const auto& r : rows) {
    s << csv_field(r.id) << "," << r.rep;
    for (const auto& a : spec.axes) s << "," << csv_field(r.values.at(a.flag));
    for (const auto& m : metrics) {
      auto it = r.metrics.find(m);
      s << "," << (it == r.metrics.end() ? std::string() : format_number(it->second));
    }
    s << "," << csv_field(r.record_file) << "\n";
  }
  return s.str();
}

std::vector<std::string> write_outputs(const MatrixSpec& spec, const std::string& dir, bool plots) {
  std::vector<RunRow> rows = load_rows(spec, dir);
  vmm::write_file_atomically((fs::path(dir) / "summary.csv").string(), summary_csv(spec, rows));
  if (!plots || rows.empty()) return {};
  return write_plots(spec, rows, (fs::path(dir) / "plots").string());
}

}  // namespace kvmscale::study
