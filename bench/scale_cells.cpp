#include "bench/scale_cells.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "bench/bare_kvm.hpp"
#include "bench/child_process.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::bench {
namespace {

using nlohmann::json;

// A non-negative integer at record[a][b], if there is one.
std::optional<uint64_t> u64_at(const json& record, const char* a, const char* b) {
  if (!record.is_object() || !record.contains(a) || !record[a].is_object()) return std::nullopt;
  const json& o = record[a];
  if (!o.contains(b) || !o[b].is_number_unsigned()) return std::nullopt;
  return o[b].get<uint64_t>();
}

std::optional<uint64_t> phase(const json& record, const char* name) {
  if (!record.contains("run") || !record["run"].is_object()) return std::nullopt;
  return u64_at(record["run"], "phases", name);
}

void take_rusage(Cell& c, const ChildRun& r) {
  c.cpu_user_ns = r.cpu_user_ns();
  c.cpu_sys_ns = r.cpu_sys_ns();
  c.max_rss_bytes = r.max_rss_bytes();
  c.child_wall_ns = r.end_ns - r.start_ns;
}

// Why a child did not give a measurement, or empty.
std::string child_failure(const ChildRun& r) {
  if (r.timed_out) return "timed out (killed)";
  if (r.exit_code == 0) return {};
  std::string why = r.last_error_line();
  return "exit " + std::to_string(r.exit_code) + (why.empty() ? "" : ": " + why);
}

// The bare loop holds one fd per VM: raise the soft limit as far as needed, or say why not.
void raise_fd_limit_for(uint32_t vms) {
  const rlim_t need = rlim_t(vms) + 64;
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= need) return;
  if (rl.rlim_max < need)
    throw std::runtime_error("the bare loop holds one fd per VM: " + std::to_string(vms) +
                             " VMs need " + std::to_string(need) +
                             " fds but RLIMIT_NOFILE's hard limit is " +
                             std::to_string(rl.rlim_max));
  rl.rlim_cur = need;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
    throw std::runtime_error("setrlimit(RLIMIT_NOFILE) to " + std::to_string(need) + " failed");
}

std::optional<json> parse_json(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

}  // namespace

json Cell::to_json() const {
  json j = {{"mode", mode}, {"vms", n}, {"ok", ok()}};
  if (!ok()) {
    j["error"] = error;
    return j;
  }
  j["launch_ns"] = launch_ns;
  j["teardown_ns"] = teardown_ns;
  j["cpu_ns"] = cpu_ns();
  j["cpu_user_ns"] = cpu_user_ns;
  j["cpu_sys_ns"] = cpu_sys_ns;
  j["max_rss_bytes"] = max_rss_bytes;
  j["child_wall_ns"] = child_wall_ns;
  j["per_vm"] = {{"launch_ns", per_vm(launch_ns)},
                 {"teardown_ns", per_vm(teardown_ns)},
                 {"cpu_ns", per_vm(cpu_ns())}};
  j["launch_source"] = launch_source;
  j["teardown_source"] = teardown_source;
  j["cpu_source"] = "rusage of the child process (wait4): user + system, whole run";
  j["details"] = details;
  return j;
}

std::string kvmscale_duration(const ScaleOptions& o, uint32_t n) {
  if (o.duration != "auto") return o.duration;
  return std::to_string(1000 + 3 * uint64_t(n)) + "ms";
}

Cell median_cell(const std::vector<Cell>& runs) {
  if (runs.empty()) throw std::logic_error("median_cell of nothing");
  for (const Cell& c : runs)
    if (!c.ok()) return c;
  Cell m = runs.front();
  for (uint64_t Cell::*f : {&Cell::launch_ns, &Cell::teardown_ns, &Cell::cpu_user_ns,
                            &Cell::cpu_sys_ns, &Cell::max_rss_bytes, &Cell::child_wall_ns}) {
    std::vector<uint64_t> v;
    for (const Cell& c : runs) v.push_back(c.*f);
    std::sort(v.begin(), v.end());
    m.*f = v[v.size() / 2];
  }
  if (runs.size() > 1) {
    m.details["repetitions"] = runs.size();
    json each = json::array();
    for (const Cell& c : runs)
      each.push_back(
          {{"launch_ns", c.launch_ns}, {"teardown_ns", c.teardown_ns}, {"cpu_ns", c.cpu_ns()}});
    m.details["each"] = each;
  }
  return m;
}

Cell measure_kvmscale(const std::string& sched, uint32_t n, const ScaleOptions& o) {
  Cell c;
  c.mode = sched;
  c.n = n;
  std::vector<std::string> argv = {
      o.kvmscale, "run",     "--vms",  std::to_string(n), "--vcpus",
      "1",        "--guest", "idle",   "--duration",      kvmscale_duration(o, n),
      "--mem",    o.mem,     "--json", "--sched",         sched};
  if (sched == "credit") {
    argv.push_back("--pcpus");
    argv.push_back(std::to_string(o.pcpus));
  }
  // kvmscale always writes its record to --out (default: ./results/): keep it out of the way.
  const std::string record_file = o.records_dir + "/" + sched + "-" + std::to_string(n) + "-" +
                                  std::to_string(getpid()) + ".json";
  argv.insert(argv.end(), {"--out", record_file, "--force"});
  argv.insert(argv.end(), o.kvmscale_args.begin(), o.kvmscale_args.end());
  c.details["command"] = argv;
  ChildRun r = run_program(argv, o.timeout_ns);
  ::unlink(record_file.c_str());  // the same record came on stdout
  take_rusage(c, r);
  if (c.error = child_failure(r); !c.error.empty()) return c;
  std::optional<json> rec = parse_json(r.out);
  if (!rec || !rec->is_object()) {
    c.error = "its stdout is not a JSON record";
    return c;
  }
  const uint64_t booted = u64_at(*rec, "summary", "vms_booted").value_or(0);
  if (booted != n) {
    c.error = "only " + std::to_string(booted) + " of " + std::to_string(n) + " VMs booted";
    if (rec->contains("run") && (*rec)["run"].value("end_reason", "") == "duration")
      c.error += " before the run's end (--duration " + kvmscale_duration(o, n) +
                 "): give them longer with --duration";
    return c;
  }

  // Launch: creation + boot.
  if (auto cr = phase(*rec, "create_ns"), bt = phase(*rec, "boot_ns"); cr && bt) {
    c.launch_ns = *cr + *bt;
    c.launch_source = "record: run.phases.create_ns + boot_ns";
  } else {
    auto cw = u64_at(*rec, "summary", "create_wall_ns");
    const json& boot = (*rec)["summary"].value("boot_ns", json::object());
    if (!cw || !boot.is_object() || !boot.contains("max") || !boot["max"].is_number_unsigned()) {
      c.error = "the record has neither run.phases nor summary.create_wall_ns and boot_ns.max";
      return c;
    }
    c.launch_ns = *cw + boot["max"].get<uint64_t>();
    c.launch_source = "record: summary.create_wall_ns + summary.boot_ns.max";
  }

  // Teardown: the record's phase, else what the child's clock allows.
  if (auto td = phase(*rec, "teardown_ns")) {
    c.teardown_ns = *td;
    c.teardown_source = "record: run.phases.teardown_ns";
  } else {
    // The record's timings end before the VMs are destroyed (run.wall_ns ends when the run
    // stops; the record is printed after teardown). End of run on this clock: fork + (start of
    // the run, wall clock, minus fork, wall clock) + run.wall_ns.
    auto started = u64_at(*rec, "run", "started_unix_ns");
    auto wall = u64_at(*rec, "run", "wall_ns");
    if (!started || !wall || *started < r.start_unix_ns) {
      c.error = "the record has no run.started_unix_ns and run.wall_ns to time teardown with";
      return c;
    }
    const uint64_t run_end = r.start_ns + (*started - r.start_unix_ns) + *wall;
    c.teardown_ns = r.end_ns > run_end ? r.end_ns - run_end : 0;
    c.teardown_source =
        "estimate: child exit - end of run (run.wall_ns); also holds the host probe before "
        "creation, record writing and process exit";
  }
  if (rec->contains("run") && (*rec)["run"].contains("resources"))
    c.details["resources"] = (*rec)["run"]["resources"];
  if (rec->contains("run") && (*rec)["run"].contains("phases"))
    c.details["phases"] = (*rec)["run"]["phases"];
  c.details["end_reason"] = (*rec)["run"].value("end_reason", "");
  c.details["run_wall_ns"] = (*rec)["run"].value("wall_ns", uint64_t{0});
  return c;
}

Cell measure_bare(uint32_t n, const ScaleOptions& o) {
  Cell c;
  c.mode = "bare";
  c.n = n;
  const bool unmap = o.bare_unmap_teardown;
  ChildRun r = run_forked(
      [n, unmap](int out_fd) {
        raise_fd_limit_for(n);
        BareVms vms(n);
        const uint64_t t0 = now_ns();
        for (uint32_t i = 0; i < n; i++) vms.launch_one();
        const uint64_t t1 = now_ns();
        json rep = {{"launch_ns", t1 - t0}, {"create_vm_ns", vms.create_vm_ns()}};
        if (unmap) {
          vms.unmap_each_vm();
          rep["teardown_ns"] = now_ns() - t1;
          return write_all(out_fd, rep.dump() + "\n") ? 0 : 1;
        }
        rep["teardown_start_ns"] = now_ns();
        if (!write_all(out_fd, rep.dump() + "\n")) return 1;
        vms.close_fds_keep_mappings();
        _exit(0);  // the process exit is the teardown (BareVms' destructor would unmap per VM)
      },
      o.timeout_ns);
  take_rusage(c, r);
  if (c.error = child_failure(r); !c.error.empty()) return c;
  std::optional<json> rep = parse_json(r.out);
  if (!rep || !rep->contains("launch_ns")) {
    c.error = "the bare loop's report is missing";
    return c;
  }
  c.launch_ns = (*rep)["launch_ns"].get<uint64_t>();
  c.launch_source = "bare loop: first KVM_CREATE_VM to the last VM's KVM_EXIT_HLT";
  c.details["create_vm_ns"] = (*rep)["create_vm_ns"];  // of which inside KVM_CREATE_VM
  if (unmap) {
    c.teardown_ns = (*rep)["teardown_ns"].get<uint64_t>();
    c.teardown_source = "bare loop: per VM munmap(kvm_run) + close(vCPU fd)";
  } else {
    const uint64_t start = (*rep)["teardown_start_ns"].get<uint64_t>();
    c.teardown_ns = r.end_ns > start ? r.end_ns - start : 0;
    c.teardown_source = "bare loop: close every vCPU fd, then process exit (until reaped)";
  }
  return c;
}

std::vector<NotifierRow> measure_notifier(const std::vector<uint32_t>& vm_counts,
                                          const ScaleOptions& o) {
  std::vector<uint32_t> counts = vm_counts;
  std::sort(counts.begin(), counts.end());
  const int reps = o.mm_call_reps;
  ChildRun r = run_forked(
      [&counts, reps](int out_fd) {
        const uint32_t most = counts.empty() ? 0 : counts.back();
        raise_fd_limit_for(most);
        BareVms vms(most);
        for (uint32_t m : counts) {
          while (vms.size() < m) vms.launch_one();
          MmCallCost cost = measure_mm_calls(reps);
          json row = {{"vms", m},
                      {"madvise_dontneed_ns", cost.madvise_dontneed_ns},
                      {"munmap_ns", cost.munmap_ns},
                      {"mprotect_ns", cost.mprotect_ns},
                      {"uffd_writeprotect_ns", cost.uffd_writeprotect_ns}};
          if (!write_all(out_fd, row.dump() + "\n")) return 1;
        }
        vms.close_fds_keep_mappings();
        _exit(0);  // as in measure_bare: no per-VM unmap on the way out
      },
      o.timeout_ns);
  if (std::string why = child_failure(r); !why.empty())
    throw std::runtime_error("notifier section: " + why);
  std::vector<NotifierRow> rows;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    std::optional<json> j = parse_json(line);
    if (!j || !j->contains("vms")) throw std::runtime_error("notifier section: bad report line");
    rows.push_back(
        {(*j)["vms"].get<uint32_t>(),
         {(*j)["madvise_dontneed_ns"].get<double>(), (*j)["munmap_ns"].get<double>(),
          (*j)["mprotect_ns"].get<double>(), (*j)["uffd_writeprotect_ns"].get<double>()}});
  }
  if (rows.size() != counts.size())
    throw std::runtime_error("notifier section: " + std::to_string(rows.size()) + " of " +
                             std::to_string(counts.size()) + " rows reported");
  return rows;
}

}  // namespace kvmscale::bench
