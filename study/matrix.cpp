#include "study/matrix.hpp"

#include <fcntl.h>
#include <limits.h>
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
#include <thread>

#include "app/cli.hpp"
#include "app/procs.hpp"
#include "app/record.hpp"
#include "app/settings.hpp"
#include "study/metrics.hpp"
#include "study/plots.hpp"
#include "vmm/backend.hpp"
#include "vmm/regular_file.hpp"

namespace kvmscale::study {

namespace fs = std::filesystem;
using app::ConfigError;
using nlohmann::json;

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
  const app::Setting* setting = app::find_setting(flag);
  const app::AxisSplit rule = setting ? setting->axis : app::AxisSplit::Commas;
  if (rule == app::AxisSplit::Whole) return {text};
  if (text.find(';') != std::string::npos) return app::split_list(text, ';');
  std::vector<std::string> parts = app::split_list(text);
  auto any_of_parts = [&](auto pred) { return std::any_of(parts.begin(), parts.end(), pred); };
  if (rule == app::AxisSplit::LockPolicy &&
      any_of_parts([](const std::string& p) { return p.find('=') != p.npos; }))
    return {text};
  if (rule == app::AxisSplit::PcpuList && !any_of_parts([](const std::string& p) {
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

// 16 hex digits of FNV-1a 64.
std::string fnv1a_hex(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

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
      sv->get<int64_t>() < app::kOldestRecordSchemaVersion ||
      sv->get<int64_t>() > app::kRecordSchemaVersion)
    return "schema_version is not " + std::to_string(app::kOldestRecordSchemaVersion) + " to " +
           std::to_string(app::kRecordSchemaVersion);
  return record_shape_problem(r);
}

bool read_finished_record(const std::string& path, json& out, std::string* why) {
  auto fail = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  std::string text;
  try {
    text = vmm::read_regular_file(path);
  } catch (const vmm::FileError& e) {
    return fail(e.why());
  }
  out = json::parse(text, nullptr, false);
  if (out.is_discarded()) return fail("not JSON");
  if (std::string p = record_problem(out); !p.empty()) return fail(p);
  if (out["run"]["interrupted"].get<bool>()) return fail("an interrupted run");
  return true;
}

bool holds_matrix(const std::string& dir) {
  return vmm::path_exists((fs::path(dir) / "matrix.json").string());
}

namespace {

// DIR/matrix.json's text; ConfigError naming it when it is missing or not a regular file.
json read_matrix_file(const std::string& dir) {
  const std::string file = (fs::path(dir) / "matrix.json").string();
  if (!vmm::path_exists(file)) throw ConfigError(dir + " holds no matrix (no matrix.json)");
  try {
    return json::parse(vmm::read_regular_file(file), nullptr, false);
  } catch (const vmm::FileError& e) {
    throw ConfigError(e.what());
  }
}

}  // namespace

std::string matrix_backend(const std::string& dir) {
  json j = read_matrix_file(dir);
  if (j.is_discarded() || !j.is_object()) return {};
  auto it = j.find("backend");
  if (it == j.end() || !it->is_string() || *it == "unknown") return {};
  return it->get<std::string>();
}

std::string spec_digest(const MatrixSpec& spec) { return fnv1a_hex(spec.to_json().dump()); }

MatrixSpec load_spec(const std::string& dir) {
  json j = read_matrix_file(dir);
  if (j.is_discarded() || !j.is_object() || !j.contains("spec"))
    throw ConfigError((fs::path(dir) / "matrix.json").string() + " is not a matrix spec");
  return MatrixSpec::from_json(j["spec"]);
}

std::vector<Cell> expand(const MatrixSpec& spec) {
  std::vector<Cell> cells;
  std::vector<size_t> idx(spec.axes.size(), 0);
  std::set<std::string> ids;
  while (true) {
    std::map<std::string, std::string> values;
    std::string stem, raw;  // "vms-4_lock-mcs_", and the values as they are
    for (size_t a = 0; a < spec.axes.size(); a++) {
      const Axis& ax = spec.axes[a];
      values[ax.flag] = ax.values[idx[a]];
      stem += slug(ax.flag) + "-" + slug(ax.values[idx[a]]) + "_";
      raw += ax.flag + '\0' + ax.values[idx[a]] + '\0';
    }
    // Too long for a file name: a prefix, '~' (never in a slug) and a hash of the values, which
    // tells cells apart even where their values slug alike; room left for "r999".
    const std::string short_stem =
        stem.substr(0, kMaxCellIdBytes - 4 - 18) + "~" + fnv1a_hex(raw) + "_";
    for (uint32_t rep = 0; rep < spec.repeat; rep++) {
      Cell c;
      c.rep = rep;
      c.values = values;
      c.id = stem + "r" + std::to_string(rep);
      // Distinct values can slug alike ("1:1", "1-1"): disambiguate by position.
      if (!ids.insert(c.id).second) {
        c.id += "_" + std::to_string(cells.size());
        ids.insert(c.id);
      }
      if (c.id.size() > kMaxCellIdBytes) c.id = short_stem + "r" + std::to_string(rep);
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

// Every file a matrix in `dir` writes fits dir's file system (the nearest existing ancestor's,
// for a directory yet to be made). The longest name is the temp file of a record's atomic write,
// ".<id>.json.tmp.<pid>" (pid up to 7 digits); the longest path is at most a record's under
// mismatched/ ("mismatched/<id>.<n>.json"), or a plot's or a Slurm log's (under 64 bytes).
void check_file_names(const std::string& dir, const std::vector<Cell>& cells) {
  size_t id_max = 0;
  const Cell* longest = nullptr;
  for (const Cell& c : cells)
    if (c.id.size() > id_max) id_max = c.id.size(), longest = &c;
  if (!longest) return;
  const size_t name = id_max + std::strlen("..json.tmp.1234567");
  const size_t rel = std::max<size_t>(std::strlen("mismatched/") + name, 64);
  std::error_code ec;
  fs::path probe = fs::absolute(dir, ec);
  const size_t path = probe.string().size() + 1 + rel;
  while (!fs::is_directory(probe, ec) && probe.has_relative_path()) probe = probe.parent_path();
  long name_max = ::pathconf(probe.c_str(), _PC_NAME_MAX);
  long path_max = ::pathconf(probe.c_str(), _PC_PATH_MAX);
  if (name_max <= 0) name_max = NAME_MAX;
  if (path_max <= 0) path_max = PATH_MAX;
  if (name > size_t(name_max))
    throw ConfigError("run " + longest->id + ": its record's file name takes " +
                      std::to_string(name) + " bytes, over the NAME_MAX of " +
                      std::to_string(name_max) + " of " + probe.string() + "'s file system");
  if (path >= size_t(path_max))  // PATH_MAX counts the terminating NUL
    throw ConfigError("--out " + dir +
                      " is too deep: the matrix's files would have paths of up to " +
                      std::to_string(path) + " bytes, over the PATH_MAX of " +
                      std::to_string(path_max) + "; use a shorter --out");
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

MatrixDirLock::MatrixDirLock(const std::string& dir_text, Mode mode,
                             std::chrono::milliseconds wait) {
  const fs::path dir(dir_text);
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::string path = (dir / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw ConfigError("cannot use " + dir.string() + ": " + std::strerror(errno));
  const int op = mode == Mode::Exclusive ? LOCK_EX : LOCK_SH;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (::flock(fd_, op | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EWOULDBLOCK && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (err != EWOULDBLOCK) {
      ::close(fd_);
      throw ConfigError("cannot lock " + path + ": " + std::strerror(err) +
                        " (a shared filesystem without flock: see docs/slurm.md)");
    }
    // Who holds it: shared holders are Slurm tasks; an exclusive one wrote its pid.
    std::string holder;
    if (mode == Mode::Exclusive && ::flock(fd_, LOCK_SH | LOCK_NB) == 0) {
      ::flock(fd_, LOCK_UN);
      holder = "tasks of a Slurm job or a --collect use it: see squeue";
    } else {
      char pid[64] = {};
      ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
      holder = "pid " + (n > 0 ? std::string(pid, size_t(n)) : std::string("?"));
    }
    ::close(fd_);
    fd_ = -1;
    throw ConfigError(dir.string() + " is in use by another kvmscale (" + holder +
                      "); wait for it or use another --out");
  }
  if (mode == Mode::Exclusive) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::string me = std::to_string(getpid()) + " on " + host;
    if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) < 0) {
      // the pid is only a hint for the message above
    }
  }
}

MatrixDirLock::~MatrixDirLock() { release(); }

void MatrixDirLock::release() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

size_t PreparedMatrix::pending() const {
  return size_t(std::count(done.begin(), done.end(), false));
}

std::vector<std::string> PreparedMatrix::pending_ids() const {
  std::vector<std::string> ids;
  for (size_t i : run_order(cells.size(), spec.seed))
    if (!done[i]) ids.push_back(cells[i].id);
  return ids;
}

namespace {

// Why `record` is not the run of `want` ("" if it is): the file name alone proves nothing.
// Compared as settings, not as text: a record written before a setting existed lacks its key,
// and reads back with the default (or the legacy value) it ran with.
std::string config_problem(const json& record, app::RunConfig want) {
  app::RunConfig have;
  try {
    have = app::RunConfig::from_json(record["config"]);
  } catch (const ConfigError& e) {
    return std::string("config: ") + e.what();
  }
  for (app::RunConfig* c : {&have, &want}) {
    c->json = false;
    c->out.clear();
  }
  const json h = have.to_json(), w = want.to_json();
  for (const auto& [key, value] : w.items())
    if (!h.contains(key) || h[key] != value)
      return "config." + key + " is " + (h.contains(key) ? h[key].dump() : "missing") +
             ", the cell's is " + value.dump() + " (a run of another configuration)";
  return {};
}

std::string backend_of(const json& host) {
  auto it = host.find("backend");
  std::string b = it != host.end() && it->is_string() ? it->get<std::string>() : "";
  return b == "unknown" ? std::string() : b;
}

// Why a run on `host` is not a run of a matrix on KVM backend `want` ("" accepts any); records
// that name no backend are kept (nothing to tell them by).
std::string backend_problem(const json& host, const std::string& want) {
  const std::string have = backend_of(host);
  if (have.empty() || want.empty() || have == want) return {};
  auto name = host.find("hostname");
  return "ran on KVM backend " + have + " (host " +
         (name != host.end() && name->is_string() ? name->get<std::string>() : "?") +
         "), the matrix's is " + want;
}

}  // namespace

CellRun read_cell_run(const std::string& path, const app::RunConfig& want,
                      const std::string& backend) {
  CellRun c;
  if (!vmm::path_exists(path)) return c;
  json record;
  c.state = CellRun::State::Refused;
  if (!read_finished_record(path, record, &c.why)) return c;
  if (c.why = config_problem(record, want); !c.why.empty()) return c;
  c.host = record.value("host", json::object());
  if (c.why = backend_problem(c.host, backend); !c.why.empty()) return c;
  c.metrics = run_metrics(record);  // the shape was checked: cannot throw
  c.state = CellRun::State::Usable;
  return c;
}

std::vector<CellRun> read_cell_runs(const std::string& dir, const std::vector<Cell>& cells,
                                    const std::function<app::RunConfig(size_t)>& config_of,
                                    std::string backend) {
  std::vector<CellRun> runs;
  runs.reserve(cells.size());
  for (size_t i = 0; i < cells.size(); i++) {
    const std::string path = cell_file(dir, cells[i]);
    runs.push_back(vmm::path_exists(path) ? read_cell_run(path, config_of(i), backend) : CellRun{});
  }
  if (!backend.empty()) return runs;
  // A matrix created where KVM was unknown (a login node): its backend is the most common one.
  std::map<std::string, size_t> count;
  for (const CellRun& r : runs)
    if (r.state == CellRun::State::Usable && !backend_of(r.host).empty())
      count[backend_of(r.host)]++;
  size_t best = 0;
  for (const auto& [b, n] : count)
    if (n > best) best = n, backend = b;
  for (CellRun& r : runs) {
    if (r.state != CellRun::State::Usable) continue;
    if (r.why = backend_problem(r.host, backend); !r.why.empty()) r.state = CellRun::State::Refused;
  }
  return runs;
}

namespace {

// Moves a refused cell file to DIR/mismatched/ (a new name if one is there): kept for a look,
// never counted or pooled. Throws ConfigError when it cannot, before the cell runs over it.
void set_aside(const fs::path& dir, const Cell& cell) {
  std::error_code ec;
  fs::create_directories(dir / "mismatched", ec);
  fs::path to = dir / "mismatched" / (cell.id + ".json");
  for (int n = 1; vmm::path_exists(to.string()); n++)
    to = dir / "mismatched" / (cell.id + "." + std::to_string(n) + ".json");
  fs::rename(dir / "cells" / (cell.id + ".json"), to, ec);
  if (ec)
    throw ConfigError("cannot move " + (dir / "cells" / (cell.id + ".json")).string() + " to " +
                      to.string() + ": " + ec.message());
}

std::string this_host() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

}  // namespace

CheckedCells check_cells(const MatrixSpec& spec, const std::string& dir, const ConfigFn& config,
                         const StopFn& stop) {
  CheckedCells checked;
  checked.cells = expand(spec);
  check_file_names(dir, checked.cells);
  // Every cell must be a valid run before any runs: no half-done matrix because of a typo.
  std::set<std::string> images;  // each guest image read once
  for (const Cell& c : checked.cells) {
    if (stop && stop()) {
      checked.stopped = true;
      break;
    }
    try {
      checked.configs.push_back(config(cell_args(spec, c)));
      app::check_run_inputs(checked.configs.back(), &images);
    } catch (const ConfigError& e) {
      throw ConfigError("run " + c.id + ": " + e.what());
    }
    checked.configs.back().out = cell_file(dir, c);
    checked.configs.back().json = false;
  }
  return checked;
}

PreparedMatrix prepare_matrix(const MatrixSpec& spec, const MatrixOptions& opt,
                              const ConfigFn& config) {
  return prepare_matrix(spec, opt, check_cells(spec, opt.dir, config));
}

PreparedMatrix prepare_matrix(const MatrixSpec& spec_in, const MatrixOptions& opt,
                              CheckedCells checked) {
  if (checked.stopped || checked.configs.size() != checked.cells.size())
    throw std::logic_error("prepare_matrix: not every cell was checked");
  PreparedMatrix p;
  p.spec = spec_in;
  MatrixSpec& spec = p.spec;
  const fs::path dir(opt.dir), spec_file = dir / "matrix.json";
  std::string backend = vmm::backend_name(vmm::detect_backend());
  if (holds_matrix(opt.dir)) {
    if (!opt.resume)
      throw ConfigError(opt.dir +
                        " already holds a matrix: use --resume to finish it, or another --out");
    MatrixSpec old = load_spec(opt.dir);
    if (!old.same_experiment(spec))
      throw ConfigError("--resume: the flags differ from " + spec_file.string() +
                        " (resume with the same flags, or none)");
    spec.seed = old.seed;
    if (std::string stored = matrix_backend(opt.dir); !stored.empty()) backend = stored;
  }
  p.cells = std::move(checked.cells);
  p.configs = std::move(checked.configs);
  fs::create_directories(dir / "cells");
  for (const auto& [name, content] : opt.extra_files)
    app::write_file_atomically((dir / name).string(), content);
  json meta = {{"spec", spec.to_json()},
               {"tool", app::version_string()},
               {"runs", p.cells.size()},
               {"backend", backend == "unknown" ? json() : json(backend)}};
  app::write_file_atomically(spec_file.string(), meta.dump(2) + "\n");

  // Temp files of writes a SIGKILL cut short (".<name>.tmp.<pid>"): nobody will finish them (the
  // Exclusive lock proves no task is writing).
  for (const auto& e : fs::directory_iterator(dir / "cells")) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 && name[0] == '.' && name.find(".tmp.") != std::string::npos)
      fs::remove(e.path());
  }
  // Which runs are finished, judged as --collect and compare judge them; what is refused is set
  // aside and its cell runs again.
  const std::vector<CellRun> runs = read_cell_runs(
      opt.dir, p.cells, [&](size_t i) { return p.configs[i]; },
      backend == "unknown" ? std::string() : backend);
  p.done.assign(p.cells.size(), false);
  for (size_t i = 0; i < p.cells.size(); i++) {
    p.done[i] = runs[i].state == CellRun::State::Usable;
    if (runs[i].state != CellRun::State::Refused) continue;
    set_aside(dir, p.cells[i]);
    p.warnings.push_back("cells/" + p.cells[i].id + ".json: " + runs[i].why +
                         ": moved to mismatched/, the cell runs again");
  }
  return p;
}

MatrixOutcome run_matrix(const MatrixSpec& spec_in, const MatrixOptions& opt,
                         const ConfigFn& config, const RunFn& run, const StopFn& stop,
                         std::ostream& log) {
  const fs::path dir(opt.dir);
  MatrixOutcome out;
  // Checked before the lock creates DIR: a matrix refused or stopped here writes nothing.
  CheckedCells checked = check_cells(spec_in, opt.dir, config, stop);
  if (checked.stopped) {
    out.total = checked.cells.size();
    out.interrupted = true;
    out.started = false;
    return out;
  }
  MatrixDirLock lock(opt.dir, MatrixDirLock::Mode::Exclusive);
  PreparedMatrix p = prepare_matrix(spec_in, opt, std::move(checked));
  const MatrixSpec& spec = p.spec;
  const std::vector<Cell>& cells = p.cells;
  out.total = cells.size();
  out.warnings = p.warnings;
  out.skipped = cells.size() - p.pending();
  const size_t todo = p.pending();
  if (out.skipped) log << "resuming: " << out.skipped << " of " << cells.size() << " runs done\n";
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  size_t k = 0;
  for (size_t i : run_order(cells.size(), spec.seed)) {
    const Cell& c = cells[i];
    if (p.done[i]) continue;
    const std::string path = cell_file(opt.dir, c);
    if (stop && stop()) {
      out.interrupted = true;
      break;
    }
    k++;
    const app::RunConfig& cfg = p.configs[i];
    const auto r0 = clock::now();
    std::string result;
    try {
      json record = run(cfg);
      if (record["run"].value("interrupted", false)) {
        out.interrupted = true;  // the interrupted run is not kept: it would bias its cell
        break;
      }
      app::write_file_atomically(path, record.dump(2) + "\n");
      fs::remove(dir / "failed" / (c.id + ".txt"));
      out.ran++;
      auto m = run_metrics(record);
      std::ostringstream s;
      s << m["vms_booted"] << "/" << record["summary"].value("vms", 0) << " booted";
      if (m.count("boot_max_ms"))
        s << ", boot max " << app::format_duration(uint64_t(m["boot_max_ms"] * 1e6));
      result = s.str();
    } catch (const std::exception& e) {
      // Including a ConfigError: every cell was checked, so this one changed since (e.g. its
      // guest image was removed): its run failed, the others go on.
      fs::create_directories(dir / "failed");
      app::write_file_atomically((dir / "failed" / (c.id + ".txt")).string(),
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

CellOutcome run_cell(const std::string& dir_text, const std::string& cell_id,
                     const std::string& digest, const ConfigFn& config, const RunFn& run,
                     std::ostream& log, std::chrono::milliseconds lock_wait) {
  const fs::path dir(dir_text);
  if (!holds_matrix(dir_text)) throw ConfigError(dir_text + " holds no matrix (no matrix.json)");
  // A submission releases its Exclusive lock right after sbatch: a task may start before that.
  MatrixDirLock lock(dir_text, MatrixDirLock::Mode::Shared, lock_wait);
  const MatrixSpec spec = load_spec(dir_text);
  if (!digest.empty() && spec_digest(spec) != digest)
    throw ConfigError(dir_text + " now holds another matrix (" + spec_digest(spec) +
                      ", this task was submitted for " + digest + "): nothing run");
  const std::vector<Cell> cells = expand(spec);
  auto it =
      std::find_if(cells.begin(), cells.end(), [&](const Cell& c) { return c.id == cell_id; });
  if (it == cells.end()) throw ConfigError("--cell " + cell_id + ": no such cell in " + dir_text);
  app::RunConfig cfg = config(cell_args(spec, *it));
  const std::string path = cell_file(dir_text, *it);
  cfg.out = path;
  cfg.json = false;
  const std::string host = this_host();
  auto record_failure = [&](const std::string& why) {
    std::error_code ec;
    fs::create_directories(dir / "failed", ec);
    app::write_file_atomically((dir / "failed" / (cell_id + ".txt")).string(),
                               why + " (host " + host + ")\n");
  };
  const std::string want = matrix_backend(dir_text);
  const std::string have = vmm::backend_name(vmm::detect_backend());
  if (!want.empty() && have != want) {
    std::string why = "host " + host + " has KVM backend " + have + ", the matrix's is " + want +
                      ": not run (exclude this node, e.g. --sbatch-arg=--exclude=" + host + ")";
    record_failure(why);
    throw ConfigError(why);
  }
  // The matrix's backend, or when it is unknown any: a task cannot tell the most common one.
  const CellRun done = read_cell_run(path, cfg, want);
  if (done.state == CellRun::State::Usable) {
    log << "cell " << cell_id << ": already finished, nothing to do\n";
    return CellOutcome::AlreadyDone;
  }
  if (done.state == CellRun::State::Refused) {
    set_aside(dir, *it);
    log << "cell " << cell_id << ": cells/" << cell_id << ".json: " << done.why
        << ": moved to mismatched/, the cell runs again\n";
  }
  json record;
  log << "cell " << cell_id << " on " << host << ":";
  for (const auto& a : cell_args(spec, *it)) log << " " << a;
  log << "\n" << std::flush;
  try {
    record = run(cfg);
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    record_failure(e.what());
    throw;
  }
  if (record["run"].value("interrupted", false)) {
    log << "cell " << cell_id << ": interrupted, its run is not kept\n";
    return CellOutcome::Interrupted;
  }
  app::write_file_atomically(path, record.dump(2) + "\n");
  std::error_code ec;
  fs::remove(dir / "failed" / (cell_id + ".txt"), ec);
  log << "cell " << cell_id << ": written to " << path << "\n";
  return CellOutcome::Ran;
}

std::vector<RunRow> load_rows(const MatrixSpec& spec, const std::string& dir,
                              std::vector<std::string>* warnings) {
  const std::vector<Cell> cells = expand(spec);
  // A cell's configuration is needed only where a file stands: parsed then, once for all the
  // repetitions of its values.
  std::map<std::map<std::string, std::string>, app::RunConfig> parsed;
  auto config_of = [&](size_t i) {
    auto it = parsed.find(cells[i].values);
    if (it != parsed.end()) return it->second;
    try {
      return parsed[cells[i].values] = app::parse_run_args(cell_args(spec, cells[i]));
    } catch (const ConfigError& e) {
      throw ConfigError("run " + cells[i].id + ": " + e.what());
    }
  };
  const std::vector<CellRun> runs = read_cell_runs(dir, cells, config_of, matrix_backend(dir));
  std::vector<RunRow> rows;
  for (size_t i = 0; i < cells.size(); i++) {
    const Cell& c = cells[i];
    const std::string file = "cells/" + c.id + ".json";
    if (runs[i].state == CellRun::State::Usable)
      rows.push_back({c.id, c.values, c.rep, runs[i].metrics, file, runs[i].host});
    else if (runs[i].state == CellRun::State::Refused && warnings)
      warnings->push_back(file + ": " + runs[i].why +
                          ": left out (matrix --resume runs the cell again)");
  }
  return rows;
}

namespace {

// RFC 4180: a field holding a comma, quote, CR or LF is quoted, its quotes doubled, so it stays
// one field whatever bytes it holds.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
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
  for (const auto& m : metrics) s << "," << csv_field(m);  // guest metric names come from records
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
  std::vector<std::string> warnings;
  std::vector<RunRow> rows = load_rows(spec, dir, &warnings);
  app::write_file_atomically((fs::path(dir) / "summary.csv").string(), summary_csv(spec, rows));
  if (!plots || rows.empty()) return warnings;
  for (auto& w : write_plots(spec, rows, (fs::path(dir) / "plots").string()))
    warnings.push_back(std::move(w));
  return warnings;
}

}  // namespace kvmscale::study
