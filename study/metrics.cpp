#include "study/metrics.hpp"

#include <stdexcept>
#include <string_view>

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

// What a reader requires of a field where it is present (docs/run-record.md).
enum class Shape {
  Object,
  Array,
  Flag,    // true or false
  Count,   // a whole number >= 0
  Amount,  // a number >= 0: durations, percentiles, sums
  Ratio,   // a number >= 0, or null (a NaN is written as null): the metric is then absent
  Text,    // a string, or null (a host fact that could not be read)
};

struct FieldRule {
  const char* path;  // dots into objects; "name[]" is every element of an array, "*" every member
  Shape shape;
  bool required = false;
};

// Every field the study reads from a record (run_metrics, the matrix's checks, host facts), in
// an order where a container comes before its members. Absent optional fields count as 0:
// older records lack newer counters.
const FieldRule kRecordFields[] = {
    {"run", Shape::Object, true},
    {"run.interrupted", Shape::Flag, true},
    {"run.exec_ns", Shape::Amount},
    {"config", Shape::Object, true},
    {"host", Shape::Object},
    {"host.hostname", Shape::Text},
    {"host.backend", Shape::Text},
    {"summary", Shape::Object, true},
    {"summary.vms", Shape::Count, true},
    {"summary.vms_booted", Shape::Count, true},
    {"summary.vms_crashed", Shape::Count, true},
    {"summary.exits_total", Shape::Count, true},
    {"summary.boot_ns", Shape::Object},
    {"summary.boot_ns.p50", Shape::Amount},
    {"summary.boot_ns.max", Shape::Amount},
    {"cross_calls", Shape::Object},
    {"cross_calls.calls", Shape::Count},
    {"cross_calls.latency_ns_total", Shape::Amount},
    {"cross_calls.latency_ns_max", Shape::Amount},
    {"cross_calls.flush_mask_mean", Shape::Ratio},
    {"cross_calls.initiators_max_concurrent", Shape::Count},
    {"locks", Shape::Object},
    {"locks.classes", Shape::Object},
    {"locks.classes.call", Shape::Object},
    {"locks.classes.call.acquisitions", Shape::Count},
    {"locks.classes.call.contended", Shape::Count},
    {"locks.classes.call.wait_ns", Shape::Amount},
    {"locks.classes.call.wait_max_ns", Shape::Amount},
    {"locks.classes.runq", Shape::Object},
    {"locks.classes.runq.wait_ns", Shape::Amount},
    {"vms", Shape::Array},
    {"vms[]", Shape::Object},
    {"vms[].metrics", Shape::Object},
    {"vms[].metrics.*", Shape::Amount},
    {"vms[].pod", Shape::Object},
    {"vms[].pod.populates", Shape::Count},
    {"vms[].pod.reclaimed", Shape::Count},
    {"vms[].pod.sweeps", Shape::Count},
    {"vms[].pod.flushes", Shape::Count},
    {"vms[].pod.fault_stall_ns", Shape::Amount},
    {"sched", Shape::Object},
    {"sched.sched_overhead", Shape::Ratio},
    {"sched.jain_fairness", Shape::Ratio},
    {"sched.pcpus", Shape::Array},
    {"sched.pcpus[]", Shape::Object},
    {"sched.pcpus[].balance", Shape::Object},
    {"sched.pcpus[].balance.attempts_idle", Shape::Count},
    {"sched.pcpus[].balance.attempts_over", Shape::Count},
    {"sched.pcpus[].balance.trylocks", Shape::Count},
    {"sched.pcpus[].balance.trylock_failures", Shape::Count},
    {"sched.pcpus[].balance.skipped_bitmap", Shape::Count},
    {"sched.pcpus[].balance.skipped_count", Shape::Count},
    {"sched.pcpus[].balance.steals", Shape::Count},
    {"sched.pcpus[].balance.balance_ns", Shape::Amount},
    {"sched.vcpus", Shape::Array},
    {"sched.vcpus[]", Shape::Object},
    {"sched.vcpus[].migrations", Shape::Count},
};

std::string shown(const json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 24 ? s.substr(0, 20) + "..." : s;
}

std::string shape_problem(const json& v, const std::string& where, Shape shape) {
  auto non_negative = [&] { return v.is_number() && v.get<double>() >= 0; };
  bool ok = false;
  const char* want = "";
  switch (shape) {
    case Shape::Object: ok = v.is_object(), want = "an object"; break;
    case Shape::Array: ok = v.is_array(), want = "an array"; break;
    case Shape::Flag: ok = v.is_boolean(), want = "true or false"; break;
    case Shape::Count: ok = v.is_number_integer() && non_negative(), want = "a count >= 0"; break;
    case Shape::Amount: ok = non_negative(), want = "a number >= 0"; break;
    case Shape::Ratio: ok = v.is_null() || non_negative(), want = "a number >= 0 or null"; break;
    case Shape::Text: ok = v.is_null() || v.is_string(), want = "a string or null"; break;
  }
  return ok ? std::string() : where + " is " + shown(v) + ", not " + want;
}

// `rule` at every place the rest of its path reaches from `node` (named `where`).
std::string check_rule(const json& node, std::string_view rest, const std::string& where,
                       const FieldRule& rule) {
  if (rest.empty()) return shape_problem(node, where, rule.shape);
  if (!node.is_object()) return {};  // the container's own rule names it
  const size_t dot = rest.find('.');
  std::string_view name = rest.substr(0, dot);
  const std::string_view tail = dot == rest.npos ? std::string_view() : rest.substr(dot + 1);
  const bool each = name.ends_with("[]");
  if (each) name.remove_suffix(2);
  auto at = [&](const json& child, const std::string& child_where) -> std::string {
    if (!each) return check_rule(child, tail, child_where, rule);
    if (!child.is_array()) return {};
    for (size_t i = 0; i < child.size(); i++)
      if (std::string p =
              check_rule(child[i], tail, child_where + "[" + std::to_string(i) + "]", rule);
          !p.empty())
        return p;
    return {};
  };
  auto joined = [&](std::string_view key) {
    return where.empty() ? std::string(key) : where + "." + std::string(key);
  };
  if (name == "*") {
    for (const auto& [key, child] : node.items())
      if (std::string p = at(child, joined(key)); !p.empty()) return p;
    return {};
  }
  auto it = node.find(std::string(name));
  if (it == node.end())
    return rule.required && tail.empty() && !each ? joined(name) + " is missing" : std::string();
  return at(*it, joined(name));
}

// Read only after record_shape_problem passed: absent is 0.
double num(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? 0.0 : it->get<double>();
}

bool has(const json& j, const char* key) { return j.contains(key); }

const json& member(const json& j, const char* key) {
  static const json none = json::object();
  auto it = j.find(key);
  return it == j.end() ? none : *it;
}

}  // namespace

std::string record_shape_problem(const json& r) {
  if (!r.is_object()) return "not a JSON object";
  for (const FieldRule& rule : kRecordFields)
    if (std::string p = check_rule(r, rule.path, "", rule); !p.empty()) return p;
  return {};
}

std::map<std::string, double> run_metrics(const json& r) {
  if (std::string p = record_shape_problem(r); !p.empty()) throw std::invalid_argument(p);
  std::map<std::string, double> m;
  // A ratio written as null (NaN) has no value: its metric is absent, not 0.
  auto ratio = [&](const json& j, const char* key, const std::string& metric) {
    if (has(j, key) && !j[key].is_null()) m[metric] = j[key].get<double>();
  };
  const json& summary = member(r, "summary");
  const double exec_s = num(member(r, "run"), "exec_ns") / 1e9;
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
    ratio(cc, "flush_mask_mean", "flush_mask_mean");
    if (has(cc, "initiators_max_concurrent"))
      m["initiators_max"] = num(cc, "initiators_max_concurrent");
  }
  const json& cls = member(member(r, "locks"), "classes");
  if (has(cls, "call")) {
    m["call_lock_acq"] = num(cls["call"], "acquisitions");
    m["call_lock_contended"] = num(cls["call"], "contended");
    m["call_lock_wait_ms"] = num(cls["call"], "wait_ns") / 1e6;
    m["call_lock_wait_max_us"] = num(cls["call"], "wait_max_ns") / 1e3;
  }
  if (has(cls, "runq")) m["runq_lock_wait_ms"] = num(cls["runq"], "wait_ns") / 1e6;
  std::map<std::string, double> guest_totals;
  bool any_pod = false;
  double populates = 0, reclaimed = 0, sweeps = 0, stall_ns = 0, pod_flushes = 0;
  if (has(r, "vms")) {
    for (const json& vm : r["vms"]) {
      if (has(vm, "pod")) {
        any_pod = true;
        populates += num(vm["pod"], "populates");
        reclaimed += num(vm["pod"], "reclaimed");
        sweeps += num(vm["pod"], "sweeps");
        pod_flushes += num(vm["pod"], "flushes");
        stall_ns += num(vm["pod"], "fault_stall_ns");
      }
      for (const auto& [k, v] : member(vm, "metrics").items()) guest_totals[k] += v.get<double>();
    }
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
  const json& s = member(r, "sched");
  if (has(s, "pcpus")) {
    double attempts = 0, trylocks = 0, failures = 0, skipped = 0, steals = 0, bal_ns = 0;
    for (const json& p : s["pcpus"]) {
      const json& b = member(p, "balance");
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
    if (!has(s, "sched_overhead") || !s["sched_overhead"].is_null())
      m["sched_overhead_pct"] = num(s, "sched_overhead") * 100.0;
    double migrations = 0;
    if (has(s, "vcpus"))
      for (const json& v : s["vcpus"]) migrations += num(v, "migrations");
    m["migrations"] = migrations;
    ratio(s, "jain_fairness", "jain_fairness");
  }
  return m;
}

}  // namespace kvmscale::study
