#include "app/procs.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "app/admission.hpp"
#include "app/cli.hpp"
#include "app/host_info.hpp"
#include "app/record.hpp"
#include "app/testbed.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::app {

using kvmscale::now_ns;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Part `s` of `total` split into `k` near-equal contiguous parts: {first, count}.
std::pair<uint32_t, uint32_t> part(uint32_t total, uint32_t k, uint32_t s) {
  const uint32_t base = total / k, extra = total % k;
  return {s * base + std::min(s, extra), base + (s < extra ? 1 : 0)};
}

std::string range_text(uint32_t first, uint32_t count) {
  return count == 1 ? std::to_string(first)
                    : std::to_string(first) + "-" + std::to_string(first + count - 1);
}

// A hard affinity must lie in the pool of its VM's process: Xen keeps a vCPU's affinity within
// its domain's pool (do_domctl XEN_DOMCTL_setvcpuaffinity intersects it with
// cpupool_domain_cpumask()). A pin into another pool cannot be honoured: refuse it.
void check_pins(const RunConfig& cfg, const std::vector<Shard>& shards) {
  if (cfg.sched == "host" || cfg.vcpu_pin == "none") return;
  for (const Shard& s : shards)
    for (uint32_t vm = s.first_vm; vm < s.first_vm + s.vms; vm++)
      for (uint32_t v = 0; v < cfg.vcpus; v++) {
        const uint32_t p = cfg.pin_of(vm * cfg.vcpus + v).at(0);
        if (p >= s.first_pcpu && p < s.first_pcpu + s.pcpus) continue;
        throw ConfigError("--vcpu-pin " + cfg.vcpu_pin + " pins vCPU " + std::to_string(v) +
                          " of vm" + std::to_string(vm) + " to pCPU " + std::to_string(p) +
                          ", outside the pool of its process " + std::to_string(s.index) +
                          " (pCPUs " + range_text(s.first_pcpu, s.pcpus) + " of " +
                          std::to_string(shards.size()) +
                          " pools, docs/scheduler.md): pin within the pools or use --procs 1");
      }
}

}  // namespace

ProcsPlan plan_procs(const RunConfig& cfg, uint64_t nofile_hard) {
  cfg.validate();
  ProcsPlan plan;
  uint32_t k = cfg.procs_given();
  if (k) {
    plan.rule = "given: --procs " + cfg.procs;
  } else {
    // As check_limits counts: kSpareFds kept for stdio, /dev/kvm, files and creation.
    const uint64_t per_vm = fds_per_vm(cfg.vcpus);
    const uint64_t fit = vms_fitting_fds(nofile_hard, cfg.vcpus);
    const uint64_t by_fds = fit ? ceil_div(cfg.vms, fit) : cfg.vms;
    plan.rule = "auto: RLIMIT_NOFILE hard " + std::to_string(nofile_hard) + " holds " +
                std::to_string(fit) + " VMs of " + std::to_string(per_vm) + " fd(s) per process (" +
                std::to_string(by_fds) + ")";
    uint64_t want = by_fds;
    if (cfg.sched == "host") {
      // vCPU threads are Linux's to schedule either way; fewer VMs per process make every
      // mapping change (PoD reclaim included) call fewer VMs' notifiers (docs/scale.md).
      const uint64_t by_vms = ceil_div(cfg.vms, kVmsPerProcess);
      plan.rule += "; --sched host: one process per " + std::to_string(kVmsPerProcess) + " VMs (" +
                   std::to_string(by_vms) + ")";
      want = std::max(want, by_vms);
    } else {
      // Under credit/rr a process is a cpupool: splitting changes the experiment, so only when
      // one process cannot hold the VMs.
      plan.rule += "; --sched " + cfg.sched + ": processes are cpupools, split only to fit";
    }
    uint64_t cap = cfg.vms;
    if (cfg.sched != "host") cap = std::min<uint64_t>(cap, cfg.effective_pcpus());
    if (want > cap) {
      plan.rule += "; at most " + std::to_string(cap) +
                   (cfg.sched != "host" ? " (one pCPU per pool)" : " (one VM per process)");
      want = cap;
    }
    k = uint32_t(want);
    plan.rule += " -> " + std::to_string(k);
  }
  // A process whose VMs' fds cannot fit would fail its own check after it started: say so now.
  const uint64_t largest_shard = ceil_div(cfg.vms, k);
  if (k > 1 && nofile_hard > kSpareFds && largest_shard > vms_fitting_fds(nofile_hard, cfg.vcpus))
    throw RunError(
        "--procs " + std::to_string(k) + ": a process of " + std::to_string(largest_shard) +
        " VMs needs " + std::to_string(largest_shard * fds_per_vm(cfg.vcpus)) +
        " fds but RLIMIT_NOFILE's hard limit is " + std::to_string(nofile_hard) +
        (cfg.sched != "host"
             ? " and --sched " + cfg.sched + " allows at most one process per pCPU (--pcpus)"
             : std::string()) +
        ": raise ulimit -n, or use fewer VMs or vCPUs");
  const bool pools = cfg.sched != "host";
  for (uint32_t s = 0; s < k; s++) {
    Shard sh;
    sh.index = s;
    sh.count = k;
    std::tie(sh.first_vm, sh.vms) = part(cfg.vms, k, s);
    if (pools) std::tie(sh.first_pcpu, sh.pcpus) = part(cfg.effective_pcpus(), k, s);
    plan.shards.push_back(sh);
  }
  check_pins(cfg, plan.shards);
  return plan;
}

namespace {

// Counters of several processes as one: numbers summed (maxima for *max*), equal-length
// histograms added bucket by bucket, other lists joined; text and flags kept from the first.
void add_counters(json& into, const json& from) {
  for (auto it = from.begin(); it != from.end(); ++it) {
    const std::string& key = it.key();
    if (!into.contains(key)) {
      into[key] = *it;
      continue;
    }
    json& a = into[key];
    const json& b = *it;
    if (a.is_number_unsigned() && b.is_number_unsigned())
      a = key.find("max") != std::string::npos ? std::max(a.get<uint64_t>(), b.get<uint64_t>())
                                               : a.get<uint64_t>() + b.get<uint64_t>();
    else if (a.is_number() && b.is_number())
      a = key.find("max") != std::string::npos ? std::max(a.get<double>(), b.get<double>())
                                               : a.get<double>() + b.get<double>();
    else if (a.is_object() && b.is_object())
      add_counters(a, b);
    else if (a.is_array() && b.is_array()) {
      // Histograms end at their last non-empty bucket, so two processes' differ in length.
      if (key.find("hist") != std::string::npos) {
        while (a.size() < b.size()) a.push_back(0);
        for (size_t i = 0; i < b.size(); i++) a[i] = a[i].get<uint64_t>() + b[i].get<uint64_t>();
      } else
        for (const auto& x : b) a.push_back(x);
    }
  }
}

// A pool's cpulist ("0-1,3") in run-wide pCPU numbers: each number moved up by `first`.
std::string shift_cpulist(const std::string& list, uint32_t first) {
  std::string out, num;
  auto flush = [&] {
    if (!num.empty()) out += std::to_string(std::stoul(num) + first);
    num.clear();
  };
  for (char ch : list) {
    if (ch >= '0' && ch <= '9') {
      num += ch;
      continue;
    }
    flush();
    out += ch;
  }
  flush();
  return out;
}

double ratio(uint64_t num, uint64_t den) { return den ? double(num) / double(den) : 0.0; }

// Credit/rr: one report per pool, numbered run-wide (pCPUs from the pool's first, vCPU ids and
// domains from the shard's first VM). Host: the counters summed.
json merge_sched(const RunConfig& cfg, const std::vector<ShardResult>& rs) {
  const json& first = rs[0].record["sched"];
  uint64_t double_runs = 0;
  for (const auto& r : rs) double_runs += r.record["sched"].value("double_runs", uint64_t{0});
  if (!first.contains("pcpus")) {
    json m = json::object();
    for (const auto& r : rs) add_counters(m, r.record["sched"]);
    return m;
  }
  json m = first;
  m["pcpus"] = json::array();
  m["vcpus"] = json::array();
  m["vms"] = json::array();
  uint64_t passes = 0, accounting = 0, wall = 0, total_run = 0;
  double overhead = 0;
  for (const auto& r : rs) {
    const json& s = r.record["sched"];
    for (json p : s["pcpus"]) {
      p["index"] = p["index"].get<uint32_t>() + r.shard.first_pcpu;
      p["pool"] = r.shard.index;
      m["pcpus"].push_back(p);
    }
    for (json v : s["vcpus"]) {
      v["id"] = v["id"].get<uint32_t>() + r.shard.first_vm * cfg.vcpus;
      v["domain"] = v["domain"].get<uint32_t>() + r.shard.first_vm;
      v["pool"] = r.shard.index;
      for (const char* set : {"pcpus_used", "affinity"})
        if (v.contains(set) && v[set].is_string())
          v[set] = shift_cpulist(v[set].get<std::string>(), r.shard.first_pcpu);
      m["vcpus"].push_back(v);
    }
    for (const auto& v : s["vms"]) {
      m["vms"].push_back(v);
      total_run += v["run_ns"].get<uint64_t>();
    }
    passes += s.value("accounting_passes", uint64_t{0});
    accounting += s.value("accounting_ns", uint64_t{0});
    wall = std::max(wall, s.value("wall_ns", uint64_t{0}));
    overhead += s.value("sched_overhead", 0.0) * double(r.shard.pcpus);
  }
  double sum = 0, sum_sq = 0;
  for (json& v : m["vms"]) {
    const uint64_t run = v["run_ns"].get<uint64_t>();
    v["cpu_share"] = ratio(run, total_run);
    const double x = double(run) / v["weight"].get<double>();
    sum += x;
    sum_sq += x * x;
  }
  m["jain_fairness"] = sum_sq > 0 ? sum * sum / (double(m["vms"].size()) * sum_sq) : 1.0;
  m["accounting_passes"] = passes;
  if (first.contains("accounting_ns")) m["accounting_ns"] = accounting;
  m["wall_ns"] = wall;
  m["sched_overhead"] = overhead / double(cfg.effective_pcpus());
  m["double_runs"] = double_runs;
  return m;
}

json merge_locks(const std::vector<ShardResult>& rs) {
  json m = {{"policy", rs[0].record["locks"]["policy"]},
            {"profiling", rs[0].record["locks"]["profiling"]},
            {"classes", json::object()},
            {"locks", json::array()}};
  for (const auto& r : rs) {
    add_counters(m["classes"], r.record["locks"]["classes"]);
    for (json l : r.record["locks"]["locks"]) {
      l["name"] = "proc" + std::to_string(r.shard.index) + ":" + l["name"].get<std::string>();
      m["locks"].push_back(l);
    }
  }
  return m;
}

json merge_tlb(const std::vector<ShardResult>& rs) {
  json m = {{"entries_per_context", rs[0].record["tlb"].value("entries_per_context", 0)},
            {"flushes_received", json::array()}};
  uint64_t hits = 0, misses = 0, stale = 0;
  for (const auto& r : rs) {
    const json& t = r.record["tlb"];
    if (t.empty()) continue;
    hits += t["hits"].get<uint64_t>();
    misses += t["misses"].get<uint64_t>();
    stale += t["stale_hits"].get<uint64_t>();
    for (const auto& f : t["flushes_received"]) m["flushes_received"].push_back(f);
  }
  m["hits"] = hits;
  m["misses"] = misses;
  m["stale_hits"] = stale;
  return m;
}

// Contexts numbered run-wide: a process's context c is pCPU first_pcpu + c of its pool
// (credit/rr) or vCPU thread first_vm * vcpus + c (host).
json merge_cross_calls(const RunConfig& cfg, const std::vector<ShardResult>& rs) {
  json m = json::object();
  uint64_t mask_total = 0;
  for (const auto& r : rs) {
    const json& c = r.record["cross_calls"];
    mask_total += uint64_t(std::llround(c.value("flush_mask_mean", 0.0) * c.value("flushes", 0.0)));
    json counters = c;
    const uint64_t first =
        cfg.sched == "host" ? uint64_t(r.shard.first_vm) * cfg.vcpus : r.shard.first_pcpu;
    if (counters.contains("initiators"))
      for (json& i : counters["initiators"])
        if (i.contains("context") && i["context"].is_number_integer())  // null: no context
          i["context"] = i["context"].get<uint64_t>() + first;
    counters.erase("targets_mean");
    counters.erase("flush_mask_mean");
    add_counters(m, counters);
  }
  m["targets_mean"] = ratio(m.value("targets", uint64_t{0}), m.value("calls", uint64_t{0}));
  m["flush_mask_mean"] = ratio(mask_total, m.value("flushes", uint64_t{0}));
  return m;
}

template <typename T>
T percentile(std::vector<T> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

json merge_summary(const json& vms, const std::vector<ShardResult>& rs) {
  std::vector<uint64_t> boots;
  uint64_t crashed = 0, exits = 0, create_total = 0, create_wall = 0;
  for (const auto& vm : vms) {
    if (!vm["boot_ns"].is_null()) boots.push_back(vm["boot_ns"].get<uint64_t>());
    if (vm["state"] == "crashed") crashed++;
  }
  for (const auto& r : rs) {
    const json& s = r.record["summary"];
    exits += s["exits_total"].get<uint64_t>();
    create_total += s["create_ns_total"].get<uint64_t>();
    create_wall = std::max(create_wall, s["create_wall_ns"].get<uint64_t>());
  }
  json summary = {
      {"vms", vms.size()},    {"vms_booted", boots.size()},      {"vms_crashed", crashed},
      {"exits_total", exits}, {"create_ns_total", create_total}, {"create_wall_ns", create_wall}};
  if (!boots.empty())
    summary["boot_ns"] = {{"min", percentile(boots, 0.0)},
                          {"p50", percentile(boots, 0.5)},
                          {"p90", percentile(boots, 0.9)},
                          {"max", percentile(boots, 1.0)}};
  return summary;
}

// run.phases: the processes run side by side, so each phase lasts as long as its slowest (boot
// null if some process's VMs did not all boot). run.resources: what all of them held at once
// (sums: RSS, threads, CPU), the host's MemAvailable as readings of one host (the highest before,
// the lowest at every later point) and the memory used as the drop between them.
void merge_run_extras(json& run, const std::vector<ShardResult>& rs) {
  for (const auto& r : rs) {
    const json& c = r.record["run"];
    if (c.contains("phases") && c["phases"].is_object()) {
      json& m = run["phases"];
      for (const auto& [k, v] : c["phases"].items()) {
        if (v.is_null() || (m.contains(k) && m[k].is_null()))
          m[k] = nullptr;
        else if (v.is_number_unsigned())
          m[k] =
              m.contains(k) ? std::max(m[k].get<uint64_t>(), v.get<uint64_t>()) : v.get<uint64_t>();
      }
    }
    if (c.contains("resources") && c["resources"].is_object()) {
      json& m = run["resources"];
      for (const auto& [k, v] : c["resources"].items()) {
        if (!v.is_number() || k.rfind("mem_used_", 0) == 0) continue;
        const uint64_t x = v.get<uint64_t>();
        if (!m.contains(k))
          m[k] = x;
        else if (k == "mem_available_before")
          m[k] = std::max(m[k].get<uint64_t>(), x);
        else if (k.rfind("mem_available_", 0) == 0)
          m[k] = std::min(m[k].get<uint64_t>(), x);
        else
          m[k] = m[k].get<uint64_t>() + x;
      }
    }
  }
  json& m = run["resources"];
  if (m.is_object() && m.contains("mem_available_before")) {
    const uint64_t before = m["mem_available_before"].get<uint64_t>();
    auto drop = [&](const char* key) {
      const uint64_t a = m.value(key, before);
      return before > a ? before - a : 0;
    };
    m["mem_used_created"] = drop("mem_available_created");
    m["mem_used_peak"] = drop("mem_available_min_running");
  }
}

std::string status_text(int st) {
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st))
    return "was killed by signal " + std::to_string(WTERMSIG(st)) + " (" + strsignal(WTERMSIG(st)) +
           ")";
  return "status " + std::to_string(st);
}

}  // namespace

json merge_shard_records(const RunConfig& cfg, const ProcsPlan& plan,
                         const std::vector<ShardResult>& rs, uint64_t started_unix_ns,
                         uint64_t wall_ns, bool interrupted) {
  json vms = json::array(), warnings = json::array(), procs = json::array();
  uint64_t exec_ns = 0;
  bool any_duration = false;
  for (const auto& r : rs) {
    const json& run = r.record["run"];
    for (const auto& vm : r.record["vms"]) vms.push_back(vm);
    for (const auto& w : run["warnings"])
      if (std::find(warnings.begin(), warnings.end(), w) == warnings.end()) warnings.push_back(w);
    exec_ns = std::max(exec_ns, run["exec_ns"].get<uint64_t>());
    interrupted = interrupted || run["interrupted"].get<bool>();
    any_duration = any_duration || run["end_reason"] == "duration";
    procs.push_back(
        {{"index", r.shard.index},
         {"vms", {r.shard.first_vm, r.shard.vms}},
         {"pcpus", cfg.sched == "host" ? json() : json({r.shard.first_pcpu, r.shard.pcpus})},
         {"pid", r.pid},
         {"exit_status", WIFEXITED(r.wait_status) ? json(WEXITSTATUS(r.wait_status)) : json()},
         {"wall_ns", r.end_ns - r.start_ns},
         {"run", run},
         {"summary", r.record["summary"]}});
  }
  const char* end = interrupted ? "interrupted" : any_duration ? "duration" : "all_exited";
  json run = {{"started_unix_ns", started_unix_ns},
              {"wall_ns", wall_ns},
              {"exec_ns", exec_ns},
              {"end_reason", end},
              {"interrupted", interrupted},
              {"warnings", warnings},
              {"procs", {{"count", rs.size()}, {"rule", plan.rule}}}};
  merge_run_extras(run, rs);
  json m = {{"schema_version", kRecordSchemaVersion},
            {"tool", tool_json()},
            {"config", cfg.to_json()},
            {"host", rs[0].record["host"]},
            {"run", run},
            {"summary", merge_summary(vms, rs)},
            {"locks", merge_locks(rs)},
            {"sched", merge_sched(cfg, rs)},
            {"tlb", merge_tlb(rs)}};
  if (rs[0].record.contains("cross_calls")) m["cross_calls"] = merge_cross_calls(cfg, rs);
  if (rs[0].record.contains("numa_placement")) {  // --numa: every process placed its own VMs
    m["numa_placement"] = json::array();
    for (const auto& r : rs)
      for (const auto& p : r.record["numa_placement"]) m["numa_placement"].push_back(p);
  }
  m["procs"] = procs;
  m["vms"] = vms;
  return m;
}

namespace {

// A private directory for the children's inputs, logs and records; removed with everything in
// it when the run is over, whatever way it ends.
struct WorkDir {
  fs::path path;
  WorkDir() {
    std::string tmpl = (fs::temp_directory_path() / "kvmscale-procs-XXXXXX").string();
    if (!mkdtemp(tmpl.data()))
      throw RunError(std::string("cannot create a directory for the VMM processes: ") +
                     std::strerror(errno));
    path = tmpl;
  }
  ~WorkDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

struct Child {
  Shard shard;
  pid_t pid = 0;
  bool running = false;
  int status = 0;
  uint64_t start_ns = 0, end_ns = 0;
  std::string in, log, record;
};

std::string describe(const Child& c) {
  return "VMM process " + std::to_string(c.shard.index) + " of " + std::to_string(c.shard.count) +
         " (vms " + range_text(c.shard.first_vm, c.shard.vms) + ", pid " + std::to_string(c.pid) +
         ")";
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The last lines of a child's stderr, indented, for an error message.
std::string stderr_tail(const Child& c) {
  std::string text = read_text(c.log);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  if (text.empty()) return "; its stderr is empty";
  size_t start = text.size() > 2000 ? text.size() - 2000 : 0;
  int lines = 0;
  for (size_t i = text.size(); i > start; i--)
    if (text[i - 1] == '\n' && ++lines == 20) {
      start = i;
      break;
    }
  std::string out = "; its stderr ends:";
  std::istringstream in(text.substr(start));
  for (std::string line; std::getline(in, line);) out += "\n    " + line;
  return out;
}

pid_t start_child(const std::string& exe, const Child& c) {
  const int in = ::open(c.in.c_str(), O_RDONLY | O_CLOEXEC);
  const int log = ::open(c.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (in < 0 || log < 0) {
    int e = errno;
    if (in >= 0) ::close(in);
    if (log >= 0) ::close(log);
    throw RunError("cannot open the files of " + describe(c) + ": " + std::strerror(e));
  }
  std::vector<std::string> argv = {exe, kShardCommand, "--record", c.record};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    dup2(in, 0);
    dup2(log, 1);
    dup2(log, 2);
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive a parent that was killed
    if (getppid() != parent) _exit(kExitFailure);
    execv(args[0], args.data());
    _exit(127);
  }
  int e = errno;
  ::close(in);
  ::close(log);
  if (pid < 0) throw RunError("cannot start " + describe(c) + ": fork: " + std::strerror(e));
  return pid;
}

// SIGTERM to every running child, then reap; after `grace_ns` what still runs is killed.
void stop_children(std::vector<Child>& children, uint64_t grace_ns) {
  for (Child& c : children)
    if (c.running) kill(c.pid, SIGTERM);
  const uint64_t deadline = now_ns() + grace_ns;
  bool killed = false;
  for (;;) {
    bool any = false;
    for (Child& c : children) {
      if (!c.running) continue;
      if (waitpid(c.pid, &c.status, WNOHANG) == c.pid) {
        c.running = false;
        c.end_ns = now_ns();
      } else {
        any = true;
      }
    }
    if (!any) return;
    if (!killed && now_ns() >= deadline) {
      for (Child& c : children)
        if (c.running) kill(c.pid, SIGKILL);
      killed = true;
    }
    usleep(10000);
  }
}

// Waits up to `ns` for SIGINT/SIGTERM (blocked in this process); true if one came.
bool wait_stop_signal(uint64_t ns) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  timespec ts{time_t(ns / 1000000000ull), long(ns % 1000000000ull)};
  return sigtimedwait(&s, nullptr, &ts) > 0;
}

uint64_t unix_now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

bool ended_ok(int status, bool* interrupted) {
  if (!WIFEXITED(status)) return false;
  if (WEXITSTATUS(status) == kExitInterrupted) *interrupted = true;
  return WEXITSTATUS(status) == kExitOk || WEXITSTATUS(status) == kExitInterrupted;
}

// What the whole run needs from the host: each process checks its own fds and mappings (limits
// per process), but memory and threads are the host's and the user's, shared by all processes.
LimitCheck check_run_wide_limits(const RunConfig& cfg) {
  LimitCheck c = check_host_limits(probe_host(nullptr), cfg, guest_image_sizes(cfg));
  std::string errors;
  for (const auto& e : c.errors) errors += "\n  " + e;
  if (!errors.empty()) throw RunError("this host cannot hold the run:" + errors);
  return c;
}

}  // namespace

json run_sharded(const RunConfig& cfg, const ProcsPlan& plan) {
  const uint64_t started_unix = unix_now_ns(), start = now_ns();
  // Inherited as ignored, SIGCHLD would have the kernel reap the children itself: waitpid
  // would never see them end.
  ::signal(SIGCHLD, SIG_DFL);
  const LimitCheck admission = check_run_wide_limits(cfg);
  const std::vector<std::string>& warnings = admission.warnings;
  std::error_code ec;
  const std::string exe = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) throw RunError("cannot find this executable to start VMM processes: " + ec.message());
  WorkDir dir;
  std::vector<Child> children(plan.shards.size());
  // A failure stops every child and reaps it before the error leaves: none is left running.
  auto fail = [&](const std::string& why, uint64_t grace_ns = 5000000000ull) {
    stop_children(children, grace_ns);
    throw RunError(why);
  };
  for (size_t i = 0; i < children.size(); i++) {
    Child& c = children[i];
    c.shard = plan.shards[i];
    const std::string base = (dir.path / ("proc" + std::to_string(i))).string();
    c.in = base + ".in.json";
    c.log = base + ".stderr";
    c.record = base + ".record.json";
    try {
      write_file_atomically(c.in,
                            json{{"config", cfg.to_json()}, {"shard", c.shard.to_json()}}.dump());
      c.start_ns = now_ns();
      c.pid = start_child(exe, c);
    } catch (const std::exception& e) {
      fail(e.what());
    }
    c.running = true;
  }

  bool interrupted = false, parent_interrupted = false;
  for (;;) {
    bool any = false;
    for (Child& c : children) {
      if (!c.running) continue;
      if (waitpid(c.pid, &c.status, WNOHANG) != c.pid) {
        any = true;
        continue;
      }
      c.running = false;
      c.end_ns = now_ns();
      bool child_interrupted = false;
      if (!ended_ok(c.status, &child_interrupted))
        fail("the run failed: " + describe(c) + " " + status_text(c.status) + stderr_tail(c));
      if (child_interrupted && !interrupted) {
        interrupted = true;  // stopped from outside: the run ends for every process
        for (Child& o : children)
          if (o.running) kill(o.pid, SIGTERM);
      }
    }
    if (!any) break;
    if (wait_stop_signal(20000000)) {
      if (parent_interrupted) fail("interrupted twice: the VMM processes were stopped", 0);
      interrupted = parent_interrupted = true;
      for (Child& c : children)
        if (c.running) kill(c.pid, SIGTERM);
    }
  }

  std::vector<ShardResult> results;
  for (const Child& c : children) {
    ShardResult r{c.shard, c.pid, c.status, c.start_ns, c.end_ns, json()};
    try {
      r.record = json::parse(read_text(c.record));
      if (!r.record.contains("vms") || r.record["vms"].size() > c.shard.vms ||
          !r.record.contains("run"))
        throw std::runtime_error("it is not the record of its VMs");
    } catch (const std::exception& e) {
      throw RunError("the run failed: " + describe(c) + " wrote no usable record (" + e.what() +
                     ")" + stderr_tail(c));
    }
    // What the child said (warnings, --console output) goes to our stderr, marked as its.
    std::istringstream log(read_text(c.log));
    for (std::string line; std::getline(log, line);)
      std::cerr << "[proc " << c.shard.index << "] " << line << "\n";
    results.push_back(std::move(r));
  }
  json record = merge_shard_records(cfg, plan, results, started_unix, now_ns() - start,
                                    parent_interrupted || interrupted);
  for (const auto& w : warnings)
    if (std::find(record["run"]["warnings"].begin(), record["run"]["warnings"].end(), w) ==
        record["run"]["warnings"].end())
      record["run"]["warnings"].push_back(w);
  // The whole run's admission (the processes skip the host-wide part).
  record["run"]["admission"] = {{"memory_needed", admission.memory_needed},
                                {"assumptions", admission.assumptions}};
  return record;
}

int shard_child_main(const std::string& record_path) {
  RunConfig cfg;
  try {
    json in = json::parse(std::string(std::istreambuf_iterator<char>(std::cin), {}));
    cfg = RunConfig::from_json(in.at("config"));
    cfg.shard = Shard::from_json(in.at("shard"));
  } catch (const std::exception& e) {
    std::cerr << "kvmscale " << kShardCommand << ": bad input: " << e.what() << "\n";
    return kExitUsage;
  }
  const Shard& s = cfg.shard;
  if (uint64_t(s.first_vm) + s.vms > cfg.vms ||
      (cfg.sched != "host" &&
       (s.pcpus < 1 || uint64_t(s.first_pcpu) + s.pcpus > cfg.effective_pcpus()))) {
    std::cerr << "kvmscale " << kShardCommand << ": the shard lies outside the run\n";
    return kExitUsage;
  }
  json record = run_testbed(cfg);
  write_file_atomically(record_path, record.dump(-1, ' ', false, json::error_handler_t::replace));
  return record["run"]["interrupted"].get<bool>() ? kExitInterrupted : kExitOk;
}

void check_run_inputs(const RunConfig& cfg, std::set<std::string>* images_checked) {
  for (const auto& g : cfg.guest_list())
    if (g.rfind("file:", 0) == 0 && (!images_checked || images_checked->insert(g).second))
      read_guest_file(g.substr(5));
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  try {
    plan_procs(cfg, nofile.rlim_max);
  } catch (const RunError&) {
    // this host's fd limit: the run reports it where it runs (a Slurm task may run elsewhere)
  }
}

nlohmann::json run_planned(const RunConfig& cfg) {
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  const ProcsPlan plan = plan_procs(cfg, nofile.rlim_max);
  if (plan.shards.size() > 1) return run_sharded(cfg, plan);
  nlohmann::json record = run_testbed(cfg);
  record["run"]["procs"] = {{"count", 1}, {"rule", plan.rule}};
  return record;
}

}  // namespace kvmscale::app
