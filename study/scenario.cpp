#include "study/scenario.hpp"

#include <algorithm>
#include <sstream>

#include "app/config.hpp"

namespace kvmscale::study {

using nlohmann::json;

const std::vector<std::string>& scenario_names() {
  static const std::vector<std::string> names = {"call-lock", "credit-balance"};
  return names;
}

namespace {

// The study's first finding: EPT flushes from PoD zero-page reclaim serialize on the global call
// lock while many VMs zero their memory at boot. Variants: the call lock's strategy (ticket as
// Xen, MCS) x its structure (global, per-CPU) x the PoD reclaim rule (xen: 4.7's, about one
// flush per populate; batched: kvmscale's, one per batch), all booting the same VMs concurrently.
ScenarioPlan call_lock_plan(const ScenarioOptions& o) {
  const uint32_t c = std::max(1u, o.host_cpus);
  const uint32_t vms = std::clamp(c, 8u, 64u);
  const uint32_t vcpus = c >= 16 ? 4 : 2;
  // Every flush starts in a fault thread acting for the faulting pCPU: one per pCPU (the
  // default), so as many initiators compete for the call lock as pCPUs fault at once, as in Xen.
  // vCPUs share pCPUs as in Xen, so flushes of different VMs target the same pCPUs. Run queues
  // use spin-then-yield locks on small hosts, where pCPU threads outnumber free cores.
  const std::string others = c >= 8 ? "" : ",runq=spin-yield,sched=spin-yield";
  const std::string ticket = "call=ticket" + others, mcs = "call=mcs" + others;
  ScenarioPlan p;
  p.name = "call-lock";
  p.description = std::to_string(vms) + " VMs x " + std::to_string(vcpus) +
                  " vCPUs boot-zero (zeroing all RAM at boot, like Windows) on " +
                  std::to_string(c) +
                  " credit pCPUs with a 50% PoD target, one flush initiator per pCPU; the call "
                  "lock as ticket/MCS x global/per-CPU, PoD reclaim xen (4.7) / batched";
  p.spec = make_spec({{"vms", std::to_string(vms)},
                      {"vcpus", std::to_string(vcpus)},
                      {"mem", "16M"},
                      {"guest", "boot-zero"},
                      {"sched", "credit"},
                      {"pcpus", std::to_string(c)},
                      {"pcpu-bind", ""},
                      {"pod-target", "50%"},
                      {"pod-reclaim", "xen,batched"},
                      {"duration", "10m"},
                      {"call-lock", "global,percpu"},
                      {"lock", ticket + ";" + mcs}},
                     o.repeat, o.seed);
  const std::map<std::string, std::string> xen = {
      {"call-lock", "global"}, {"lock", ticket}, {"pod-reclaim", "xen"}};
  auto with = [&](std::map<std::string, std::string> m) {
    m.emplace("pod-reclaim", "xen");
    return m;
  };
  p.comparisons = {
      {"MCS call lock vs Xen (global ticket)", xen, with({{"call-lock", "global"}, {"lock", mcs}})},
      {"per-CPU call locks (ticket) vs Xen", xen,
       with({{"call-lock", "percpu"}, {"lock", ticket}})},
      {"per-CPU call locks (MCS) vs Xen", xen, with({{"call-lock", "percpu"}, {"lock", mcs}})},
      {"batched reclaim vs Xen's (global ticket)",
       xen,
       {{"call-lock", "global"}, {"lock", ticket}, {"pod-reclaim", "batched"}}},
  };
  p.key_metrics = {"boot_max_ms",       "boot_p50_ms",         "pod_flushes_per_populate",
                   "call_lock_wait_ms", "call_lock_contended", "call_lock_wait_max_us",
                   "flush_avg_us",      "flush_mask_mean",     "initiators_max",
                   "fault_stall_ms"};
  return p;
}

// The study's second finding: the credit scheduler's load balancer try-locks busy peers' run
// queues for nothing when vCPUs are pinned. One spinning 1-vCPU VM per pCPU (the study's N
// vCPUs on N pCPUs: every vCPU burns its share, goes OVER and its pCPU balances), pinned 1:1 or
// not, under each balance strategy.
ScenarioPlan credit_balance_plan(const ScenarioOptions& o) {
  const uint32_t c = std::max(1u, o.host_cpus);
  ScenarioPlan p;
  p.name = "credit-balance";
  // FIFO spinlocks collapse when pCPU threads are preempted (pCPUs = all host CPUs, plus the
  // timer thread): on small hosts the run-queue locks spin then yield.
  const std::string lock = c >= 8 ? "ticket" : "spin-yield";
  p.description = std::to_string(c) + " spinning 1-vCPU VMs on " + std::to_string(c) +
                  " bound pCPUs (credit, " + o.duration + " each, run-queue lock " + lock +
                  "); vCPUs pinned 1:1 or unpinned x balance xen/affinity/counted/hybrid";
  p.spec = make_spec({{"sched", "credit"},
                      {"pcpus", std::to_string(c)},
                      {"pcpu-bind", ""},
                      {"guest", "spin"},
                      {"vms", std::to_string(c)},
                      {"vcpus", "1"},
                      {"mem", "8M"},
                      {"duration", o.duration},
                      {"lock", lock},
                      {"vcpu-pin", "1:1,none"},
                      {"balance", "xen,affinity,counted,hybrid"}},
                     o.repeat, o.seed);
  for (const char* pin : {"1:1", "none"})
    for (const char* variant : {"affinity", "counted", "hybrid"})
      p.comparisons.push_back({std::string(pin == std::string("1:1") ? "pinned 1:1" : "unpinned") +
                                   ": " + variant + " vs xen",
                               {{"vcpu-pin", pin}, {"balance", "xen"}},
                               {{"vcpu-pin", pin}, {"balance", variant}}});
  p.key_metrics = {"balance_trylocks",   "balance_trylock_failures", "balance_steals", "balance_us",
                   "sched_overhead_pct", "guest_iterations_per_s",   "jain_fairness"};
  return p;
}

bool matches(const RunRow& r, const std::map<std::string, std::string>& sel) {
  for (const auto& [k, v] : sel) {
    auto it = r.values.find(k);
    if (it == r.values.end() || it->second != v) return false;
  }
  return true;
}

RunSet select(const std::vector<RunRow>& rows, const std::map<std::string, std::string>& sel) {
  RunSet s;
  for (const auto& [k, v] : sel) s.label += (s.label.empty() ? "" : " ") + k + "=" + v;
  for (const auto& r : rows)
    if (matches(r, sel)) s.runs.push_back(r.metrics);
  return s;
}

}  // namespace

ScenarioPlan plan_scenario(const std::string& name, const ScenarioOptions& opt) {
  if (name == "call-lock") return call_lock_plan(opt);
  if (name == "credit-balance") return credit_balance_plan(opt);
  throw app::ConfigError("unknown scenario '" + name + "' (available: call-lock, credit-balance)");
}

ScenarioVerdict scenario_verdict(const ScenarioPlan& plan, const std::vector<RunRow>& rows) {
  ScenarioVerdict v;
  std::ostringstream text;
  text << "scenario " << plan.name << ": " << plan.description << "\n";
  v.json = {{"scenario", plan.name}, {"description", plan.description}};
  json comps = json::array();
  for (const auto& c : plan.comparisons) {
    RunSet a = select(rows, c.a), b = select(rows, c.b);
    text << "\n== " << c.label << "\n";
    if (a.runs.empty() || b.runs.empty()) {
      text << "(no finished runs on one side)\n";
      continue;
    }
    auto rows_c = compare_sets(a, b, plan.key_metrics);
    text << comparison_text(a, b, rows_c);
    std::string better, worse;
    for (const auto& m : rows_c) {
      if (m.verdict == "better") better += " " + m.metric;
      if (m.verdict == "worse") worse += " " + m.metric;
    }
    text << "verdict: "
         << (better.empty() && worse.empty() ? std::string("no significant difference")
                                             : (better.empty() ? "" : "better on" + better) +
                                                   (better.empty() || worse.empty() ? "" : "; ") +
                                                   (worse.empty() ? "" : "worse on" + worse))
         << "\n";
    json cj = comparison_json(a, b, rows_c);
    cj["label"] = c.label;
    comps.push_back(cj);
  }
  v.json["comparisons"] = comps;
  v.text = text.str();
  return v;
}

}  // namespace kvmscale::study
