#include "app/settings.hpp"

#include <cstdint>
#include <limits>

namespace kvmscale::app {
namespace {

template <typename T>
using Field = T RunConfig::*;
using Values = std::vector<std::string>;

// JSON both ways for a field nlohmann can convert.
template <typename T>
Setting with_json(Setting s, Field<T> f) {
  s.to_json = [f](const RunConfig& c) { return nlohmann::json(c.*f); };
  s.from_json = [f](RunConfig& c, const nlohmann::json& j) { c.*f = j.get<T>(); };
  return s;
}

// Counts are plain decimal (no sign, 0x or leading 0: "010" is not 8, "0x10" not 16).
uint32_t parse_count(const std::string& text) {
  if (std::string why = decimal_count_error(text); !why.empty()) throw ConfigError(why);
  uint64_t v = parse_u64(text);
  if (v > std::numeric_limits<uint32_t>::max())
    throw ConfigError("'" + text + "' is out of range (at most 4294967295)");
  return uint32_t(v);
}

Setting count(std::string flag, std::string key, std::string help, Field<uint32_t> f,
              bool show_default = true) {
  Setting s{flag, key, help};
  if (show_default) s.default_text = std::to_string(RunConfig{}.*f);
  s.type_name = "UINT";
  s.parse = [f](RunConfig& c, const Values& v) { c.*f = parse_count(v.at(0)); };
  return with_json(s, f);
}

Setting size(std::string flag, std::string key, std::string help, Field<uint64_t> f) {
  Setting s{flag, key, help, format_size(RunConfig{}.*f), "SIZE"};
  s.parse = [f](RunConfig& c, const Values& v) { c.*f = parse_size(v.at(0)); };
  return with_json(s, f);
}

Setting duration(std::string flag, std::string key, std::string help, Field<uint64_t> f) {
  Setting s{flag, key, help, format_duration(RunConfig{}.*f), "DURATION"};
  s.parse = [f](RunConfig& c, const Values& v) { c.*f = parse_duration_ns(v.at(0)); };
  return with_json(s, f);
}

// Checked by RunConfig::validate, which names the flag and lists the choices.
Setting text(std::string flag, std::string key, std::string help, Field<std::string> f,
             bool show_default = true) {
  Setting s{flag, key, help, show_default ? RunConfig{}.*f : ""};
  s.parse = [f](RunConfig& c, const Values& v) { c.*f = v.at(0); };
  return with_json(s, f);
}

Setting flag(std::string flag, std::string key, std::string help, Field<bool> f) {
  Setting s{flag, key, help};
  s.arity = Setting::Arity::Flag;
  s.example = "true";
  s.parse = [f](RunConfig& c, const Values& v) { c.*f = v.at(0) == "true"; };  // --numa=false
  return with_json(s, f);
}

// Comma-separated whole numbers, decimal or 0x hex.
Setting u64_list(std::string flag, std::string key, std::string help,
                 Field<std::vector<uint64_t>> f) {
  Setting s{flag, key, help, "", "UINT"};
  s.arity = Setting::Arity::CommaList;
  s.parse = [f](RunConfig& c, const Values& v) {
    (c.*f).clear();
    for (const auto& a : v) (c.*f).push_back(parse_u64(a));
  };
  return with_json(s, f);
}

// Given once per item (--vm vm0:... --vm vm1:...).
Setting repeated(std::string flag, std::string key, std::string help,
                 Field<std::vector<std::string>> f) {
  Setting s{flag, key, help};
  s.arity = Setting::Arity::Repeated;
  s.parse = [f](RunConfig& c, const Values& v) { c.*f = v; };
  return with_json(s, f);
}

Setting on_off(std::string flag, std::string key, std::string help, Field<bool> f) {
  Setting s{flag, key, help, RunConfig{}.*f ? "on" : "off"};
  s.parse = [f](RunConfig& c, const Values& v) {
    if (v.at(0) != "on" && v.at(0) != "off")
      throw ConfigError("'" + v.at(0) + "' is not on or off");
    c.*f = v.at(0) == "on";
  };
  return with_json(s, f);
}

// --pcpus 0 is refused on the command line; records say 0 for "one per host CPU".
Setting pcpu_count(Setting s) {
  s.parse = [read = s.parse](RunConfig& c, const Values& v) {
    if (v.at(0) == "0") throw ConfigError("0 pCPUs: omit --pcpus for one per host CPU");
    read(c, v);
  };
  return s;
}

std::string lock_help() {
  std::string classes;
  for (const auto& c : lock_classes()) classes += (classes.empty() ? "" : " ") + c;
  return "lock strategy for every lock (ticket mcs clh ttas pthread spin-yield), or per class: "
         "call=mcs,runq=ticket (classes: " +
         classes + ")";
}

std::string guest_help() {
  std::string guests;
  for (const auto& g : builtin_guest_names()) guests += " " + g;
  return "guests, round-robin over VMs: built-in names (" + guests.substr(1) +
         ") or file:PATH images, e.g. hello,file:my.bin";
}

std::vector<Setting> make_table() {
  using A = AxisSplit;
  return {
      count("vms", "vms", "number of VMs", &RunConfig::vms).required().eg("8"),
      count("vcpus", "vcpus", "vCPUs per VM (1-64)", &RunConfig::vcpus).required().eg("1"),
      size("mem", "mem",
           "guest memory per VM, e.g. 16M, 1G (multiple of 2M, >= 6M: the 4M boot area and one 2M "
           "page of free RAM)",
           &RunConfig::mem)
          .required()
          .eg("32M"),
      text("guest", "guest", guest_help(), &RunConfig::guest).required().eg("hello,spin"),
      text("guest-file", "guest_file",
           "run a custom flat image (linked at 0x100000) in every VM; to mix it with built-in "
           "guests use --guest NAME,file:PATH",
           &RunConfig::guest_file, false)
          .eg("my.bin"),
      u64_list("guest-arg", "guest_args",
               "guest parameter(s), comma-separated (boot-info args): whole numbers up to 2^64-1, "
               "decimal or 0x hex",
               &RunConfig::guest_args)
          .axis_split(A::Whole)
          .eg("1,0x10"),
      duration("duration", "duration_ns",
               "upper bound on the run, e.g. 500ms, 10s, 2m (the run ends earlier when every "
               "guest has exited)",
               &RunConfig::duration_ns)
          .required()
          .eg("5s"),
      text("sched", "sched",
           "vCPU scheduling: host (a thread per vCPU, Linux schedules), credit (Xen credit1 over "
           "--pcpus threads), rr (round-robin over --pcpus threads)",
           &RunConfig::sched)
          .eg("credit"),
      pcpu_count(count("pcpus", "pcpus",
                       "pCPU threads for credit/rr, 1-4096 (omitted: one per host online CPU)",
                       &RunConfig::pcpus, false))
          .eg("2"),
      flag("pcpu-bind", "pcpu_bind",
           "bind pCPU i to the i-th allowed host CPU (run-wide under --procs)",
           &RunConfig::pcpu_bind),
      flag("numa", "numa",
           "bind each VM's memory to the NUMA nodes of the pCPUs its vCPUs may run on (needs "
           "--pcpu-bind)",
           &RunConfig::numa),
      text("vcpu-pin", "vcpu_pin",
           "hard affinity: none, 1:1 (vCPU k on pCPU k mod P) or a pCPU list (vCPU k on LIST[k "
           "mod len])",
           &RunConfig::vcpu_pin)
          .axis_split(A::PcpuList)
          .eg("0,1"),
      text("balance", "balance",
           "load balancing: xen (4.7: try-lock busy peers), affinity (skip peers whose queued "
           "vCPUs may not run here), counted (skip peers with <2 runnable), hybrid (counted, "
           "then the bitmap of restricted vCPUs only), none",
           &RunConfig::balance)
          .eg("affinity"),
      duration("tslice", "tslice_ns", "credit timeslice and accounting period (1ms-1000ms)",
               &RunConfig::tslice_ns)
          .eg("10ms"),
      duration("ratelimit", "ratelimit_ns", "minimum run before preemption",
               &RunConfig::ratelimit_ns)
          .eg("500us"),
      duration("migration-delay", "migration_delay_ns",
               "a vCPU switched out less than this ago is cache-hot: the balancer leaves it (Xen's "
               "vcpu_migration_delay)",
               &RunConfig::migration_delay_ns)
          .eg("1ms"),
      count("weight", "weight", "credit weight of every VM", &RunConfig::weight).eg("512"),
      count("cap", "cap", "credit cap of every VM, % of one pCPU (0 = none)", &RunConfig::cap)
          .eg("50"),
      repeated("vm", "vm_opts", "per-VM settings, e.g. vm0:weight=512 or vm1:cap=50,weight=128",
               &RunConfig::vm_opts)
          .axis_split(A::Whole)
          .eg("vm0:weight=512"),
      text("pod-target", "pod_target",
           "populate-on-demand: the free RAM a VM may have populated, SIZE or PERCENT (e.g. "
           "50%); zero pages are reclaimed over it (default: fully populated)",
           &RunConfig::pod_target, false)
          .eg("50%"),
      size("pod-granule", "pod_granule", "PoD granule: 4K or 2M", &RunConfig::pod_granule).eg("2M"),
      count("sweep-stride", "sweep_stride", "PoD zero-check batch (one flush each)",
            &RunConfig::sweep_stride)
          .eg("32"),
      count("sweep-limit", "sweep_limit", "PoD emergency sweep scan limit", &RunConfig::sweep_limit)
          .eg("512"),
      // Records from before --pod-reclaim existed reclaimed in batches: re-run them that way.
      text("pod-reclaim", "pod_reclaim",
           "PoD reclaim rule: xen (4.7: zero-check the oldest recent page on every populate, "
           "about one flush each) or batched (only when the cache is empty, --sweep-stride pages "
           "per flush)",
           &RunConfig::pod_reclaim)
          .legacy_value("batched")
          .eg("batched"),
      text("call-lock", "call_lock",
           "cross-call locking: global (one call lock, as Xen) or percpu (lock the targets)",
           &RunConfig::call_lock)
          .eg("percpu"),
      // Records from before one fault thread per pCPU had one fault thread.
      count("fault-threads", "fault_threads",
            "threads serving userfaultfd (io_uring), 1-1024; 0 = one per pCPU (at most 1024), "
            "each acting as the flush initiator for the pCPU whose fault it serves",
            &RunConfig::fault_threads)
          .legacy_value(1)
          .eg("2"),
      text("lock", "lock", lock_help(), &RunConfig::lock)
          .axis_split(A::LockPolicy)
          .eg("call=mcs,runq=ticket"),
      on_off("lock-profile", "lock_profile", "lock profiling: on or off", &RunConfig::lock_profile)
          .eg("off"),
      text("procs", "procs",
           "VMM processes the VMs are sharded over, each with its own memory, fds, threads and "
           "(credit/rr) its own pool of --pcpus: a count or auto (as many as RLIMIT_NOFILE's hard "
           "limit needs, and with --sched host at least one per 5000 VMs)",
           &RunConfig::procs)
          .legacy_value("1")  // records from before --procs ran in one process
          .axis_split(A::Commas)
          .eg("2"),
      text("out", "out", "record file (*.json) or directory for run-<time>.json", &RunConfig::out)
          .axis_split(A::None)
          .eg("r.json"),
      flag("json", "json", "print only the JSON record on stdout (logs go to stderr)",
           &RunConfig::json)
          .axis_split(A::None),
      flag("console", "echo_console", "echo guest console output to stderr",
           &RunConfig::echo_console)
          .axis_split(A::None),
  };
}

}  // namespace

const std::vector<Setting>& run_settings() {
  static const std::vector<Setting> table = make_table();
  return table;
}

const Setting* find_setting(const std::string& flag) {
  for (const Setting& s : run_settings())
    if (s.flag == flag) return &s;
  return nullptr;
}

}  // namespace kvmscale::app
