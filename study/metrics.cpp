#include "study/metrics.hpp"

#include <stdexcept>

namespace kvmscale::study {

using nlohmann::json;

const std::vector<MetricInfo>& builtin_metrics() {
  static const std::vector<MetricInfo> list = {
      {"boot_p50_ms", "ms", Better::Lower, "median VM boot time (launch to boot-done)"},
      {"boot_max_ms", "ms", Better::Lower, "slowest VM boot time: concurrent boot of all VMs"},
      {"vms_booted", "VMs", Better::Higher, "VMs that reported boot-done"},
      {"vms_crashed", "VMs", Better::Lower, "VMs that crashed"},
      {"exec_s", "s", Better::Neither, "execution time of the run"},
      {"flushes", "calls", Better::Neither, "EPT-like flushes (cross-calls)"},
      {"flush_avg_us", "us", Better::Lower, "flush latency, kick to last ack, mean"},
      {"flush_max_us", "us", Better::Lower, "flush latency, max"},
      {"flush_mask_mean", "pCPUs", Better::Lower, "flush targets (dirty mask size), mean"},
      {"initiators_max", "", Better::Neither, "most flush initiators at once"},
      {"call_lock_acq", "acq", Better::Neither, "call-lock acquisitions"},
      {"call_lock_contended", "acq", Better::Lower, "call-lock acquisitions that waited"},
      {"call_lock_wait_ms", "ms", Better::Lower, "total time waiting for the call lock"},
      {"call_lock_wait_max_us", "us", Better::Lower, "longest call-lock wait"},
      {"runq_lock_wait_ms", "ms", Better::Lower, "total time waiting for run-queue locks"},
      {"pod_populates", "pages", Better::Neither, "PoD populates (all VMs)"},
      {"pod_reclaimed", "pages", Better::Neither, "PoD zero pages reclaimed (all VMs)"},
      {"pod_sweeps", "sweeps", Better::Neither, "PoD emergency sweeps (all VMs)"},
      {"pod_flushes_per_populate", "", Better::Neither, "PoD flushes / populates (all VMs)"},
      {"fault_stall_ms", "ms", Better::Lower, "time vCPUs spent stalled in PoD faults (all VMs)"},
      {"balance_attempts", "calls", Better::Neither, "load-balance attempts (all pCPUs)"},
      {"balance_trylocks", "try", Better::Lower, "try-locks of peers' run queues"},
      {"balance_trylock_failures", "try", Better::Lower, "failed try-locks"},
      {"balance_skipped", "peers", Better::Neither, "peers skipped by a hint (bitmap or count)"},
      {"balance_steals", "vCPUs", Better::Neither, "vCPUs stolen by balancing"},
      {"balance_us", "us", Better::Lower, "time spent load balancing"},
      {"sched_overhead_pct", "%", Better::Lower, "scheduler time / pCPU time"},
      {"migrations", "moves", Better::Neither, "vCPU migrations between pCPUs"},
      {"jain_fairness", "", Better::Higher, "Jain's index over VMs' pCPU time per weight"},
      {"exits", "exits", Better::Neither, "KVM exits (all vCPUs)"},
  };
  return list;
}

MetricInfo metric_info(const std::string& name) {
  for (const auto& m : builtin_metrics())
    if (m.name == name) return m;
  if (name.rfind("guest_", 0) == 0)
    return {name, "/s", Better::Higher, "guest-published counter per second (all VMs)"};
  return {name, "", Better::Neither, ""};
}

namespace {

// A field that is absent counts as 0 (older records lack newer counters); one of the wrong type
// makes the record unusable rather than silently 0.
double num(const json& j, const char* key) {
  if (!j.is_object()) return 0.0;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return 0.0;
  if (!it->is_number()) throw std::invalid_argument(std::string("'") + key + "' is not a number");
  return it->get<double>();
}

bool has(const json& j, const char* key) { return j.is_object() && j.contains(key); }

}  // namespace

std::map<std::string, double> run_metrics(const json& r) {
  std::map<std::string, double> m;
  const json& summary = r.value("summary", json::object());
  const double exec_s = num(r.value("run", json::object()), "exec_ns") / 1e9;
  m["exec_s"] = exec_s;
  m["vms_booted"] = num(summary, "vms_booted");
  m["vms_crashed"] = num(summary, "vms_crashed");
  m["exits"] = num(summary, "exits_total");
  if (num(summary, "vms_booted") > 0 && has(summary, "boot_ns")) {
    m["boot_p50_ms"] = num(summary["boot_ns"], "p50") / 1e6;
    m["boot_max_ms"] = num(summary["boot_ns"], "max") / 1e6;
  }
  if (has(r, "cross_calls")) {
    const json& cc = r["cross_calls"];
    double calls = num(cc, "calls");
    m["flushes"] = calls;
    if (calls > 0) {
      m["flush_avg_us"] = num(cc, "latency_ns_total") / calls / 1e3;
      m["flush_max_us"] = num(cc, "latency_ns_max") / 1e3;
    }
    if (has(cc, "flush_mask_mean")) m["flush_mask_mean"] = num(cc, "flush_mask_mean");
    if (has(cc, "initiators_max_concurrent"))
      m["initiators_max"] = num(cc, "initiators_max_concurrent");
  }
  if (has(r, "locks") && has(r["locks"], "classes")) {
    const json& cls = r["locks"]["classes"];
    if (has(cls, "call")) {
      m["call_lock_acq"] = num(cls["call"], "acquisitions");
      m["call_lock_contended"] = num(cls["call"], "contended");
      m["call_lock_wait_ms"] = num(cls["call"], "wait_ns") / 1e6;
      m["call_lock_wait_max_us"] = num(cls["call"], "wait_max_ns") / 1e3;
    }
    if (has(cls, "runq")) m["runq_lock_wait_ms"] = num(cls["runq"], "wait_ns") / 1e6;
  }
  std::map<std::string, double> guest_totals;
  bool any_pod = false;
  double populates = 0, reclaimed = 0, sweeps = 0, stall_ns = 0, pod_flushes = 0;
  for (const json& vm : r.value("vms", json::array())) {
    if (has(vm, "pod")) {
      any_pod = true;
      populates += num(vm["pod"], "populates");
      reclaimed += num(vm["pod"], "reclaimed");
      sweeps += num(vm["pod"], "sweeps");
      pod_flushes += num(vm["pod"], "flushes");
      stall_ns += num(vm["pod"], "fault_stall_ns");
    }
    if (has(vm, "metrics") && vm["metrics"].is_object())
      for (const auto& [k, v] : vm["metrics"].items())
        if (v.is_number()) guest_totals[k] += v.get<double>();
  }
  if (any_pod) {
    m["pod_populates"] = populates;
    m["pod_reclaimed"] = reclaimed;
    m["pod_sweeps"] = sweeps;
    if (populates > 0) m["pod_flushes_per_populate"] = pod_flushes / populates;
    m["fault_stall_ms"] = stall_ns / 1e6;
  }
  if (exec_s > 0)
    for (const auto& [k, v] : guest_totals) m["guest_" + k + "_per_s"] = v / exec_s;
  if (has(r, "sched") && has(r["sched"], "pcpus")) {
    const json& s = r["sched"];
    double attempts = 0, trylocks = 0, failures = 0, skipped = 0, steals = 0, bal_ns = 0;
    for (const json& p : s["pcpus"]) {
      const json& b = p.value("balance", json::object());
      attempts += num(b, "attempts_idle") + num(b, "attempts_over");
      trylocks += num(b, "trylocks");
      failures += num(b, "trylock_failures");
      skipped += num(b, "skipped_bitmap") + num(b, "skipped_count");
      steals += num(b, "steals");
      bal_ns += num(b, "balance_ns");
    }
    m["balance_attempts"] = attempts;
    m["balance_trylocks"] = trylocks;
    m["balance_trylock_failures"] = failures;
    m["balance_skipped"] = skipped;
    m["balance_steals"] = steals;
    m["balance_us"] = bal_ns / 1e3;
    m["sched_overhead_pct"] = num(s, "sched_overhead") * 100.0;
    double migrations = 0;
    for (const json& v : s.value("vcpus", json::array())) migrations += num(v, "migrations");
    m["migrations"] = migrations;
    if (has(s, "jain_fairness")) m["jain_fairness"] = num(s, "jain_fairness");
  }
  return m;
}

}  // namespace kvmscale::study
