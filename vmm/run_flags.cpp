// The `run` flags: declared on a CLI11 app, then turned into a RunConfig (units parsed, errors
// naming the flag). Shared by `kvmscale run`, matrix cells and the flag fuzz target.
#include "vmm/run_flags.hpp"

#include "vmm/cli.hpp"
#include "vmm/config.hpp"
#include "vmm/guest_images.hpp"

namespace kvmscale::vmm {

namespace {

CLI::Validator decimal_count() {
  return CLI::Validator([](std::string& v) { return decimal_count_error(v); }, "");
}

}  // namespace

void add_run_flags(CLI::App& cmd, RunConfig& cfg, RunFlags& f) {
  cmd.add_option("--vms", cfg.vms, "number of VMs")->capture_default_str()->check(decimal_count());
  cmd.add_option("--vcpus", cfg.vcpus, "vCPUs per VM (1-64)")
      ->capture_default_str()
      ->check(decimal_count());
  cmd.add_option("--mem", f.mem, "guest memory per VM, e.g. 16M, 1G (multiple of 2M, >= 8M)")
      ->capture_default_str();
  std::string guests;
  for (const auto& g : builtin_guest_names()) guests += " " + g;
  cmd.add_option("--guest", f.guest,
                 "guests, round-robin over VMs: built-in names (" + guests.substr(1) +
                     ") or file:PATH images, e.g. hello,file:my.bin")
      ->default_str(cfg.guest);
  cmd.add_option("--guest-file", cfg.guest_file,
                 "run a custom flat image (linked at 0x100000) in every VM; to mix it with "
                 "built-in guests use --guest NAME,file:PATH");
  cmd.add_option("--guest-arg", f.guest_args,
                 "guest parameter(s), comma-separated (boot-info args): whole numbers up to "
                 "2^64-1, decimal or 0x hex")
      ->delimiter(',');
  cmd.add_option("--duration", f.duration,
                 "upper bound on the run, e.g. 500ms, 10s, 2m (the run ends earlier when every "
                 "guest has exited)")
      ->capture_default_str();
  cmd.add_option("--sched", cfg.sched,
                 "vCPU scheduling: host (a thread per vCPU, Linux schedules), credit (Xen credit1 "
                 "over --pcpus threads), rr (round-robin over --pcpus threads)")
      ->capture_default_str();
  cmd.add_option("--pcpus", cfg.pcpus,
                 "pCPU threads for credit/rr, 1-4096 (omitted: one per host online CPU)")
      ->check(decimal_count())
      ->check(CLI::Validator(
          [](std::string& v) {
            return v == "0" ? std::string("0 pCPUs: omit --pcpus for one per host CPU")
                            : std::string();
          },
          ""));
  cmd.add_flag("--pcpu-bind", cfg.pcpu_bind, "bind pCPU i to the i-th allowed host CPU");
  cmd.add_flag("--numa", cfg.numa,
               "bind each VM's memory to the NUMA nodes of the pCPUs its vCPUs may run on "
               "(needs --pcpu-bind)");
  cmd.add_option("--vcpu-pin", cfg.vcpu_pin,
                 "hard affinity: none, 1:1 (vCPU k on pCPU k mod P) or a pCPU list (vCPU k on "
                 "LIST[k mod len])")
      ->capture_default_str();
  cmd.add_option("--balance", cfg.balance,
                 "load balancing: xen (4.7: try-lock busy peers), affinity (skip peers whose "
                 "queued vCPUs may not run here), counted (skip peers with <2 runnable), hybrid "
                 "(counted, then the bitmap of restricted vCPUs only), none")
      ->capture_default_str();
  cmd.add_option("--tslice", f.tslice, "credit timeslice and accounting period (1ms-1000ms)")
      ->capture_default_str();
  cmd.add_option("--ratelimit", f.ratelimit, "minimum run before preemption")
      ->capture_default_str();
  cmd.add_option("--weight", cfg.weight, "credit weight of every VM")
      ->capture_default_str()
      ->check(decimal_count());
  cmd.add_option("--cap", cfg.cap, "credit cap of every VM, % of one pCPU (0 = none)")
      ->capture_default_str()
      ->check(decimal_count());
  cmd.add_option("--vm", cfg.vm_opts,
                 "per-VM settings, e.g. vm0:weight=512 or vm1:cap=50,weight=128");
  cmd.add_option("--pod-target", cfg.pod_target,
                 "populate-on-demand: the free RAM a VM may have populated, SIZE or PERCENT "
                 "(e.g. 50%); zero pages are reclaimed over it (default: fully populated)");
  cmd.add_option("--pod-granule", f.pod_granule, "PoD granule: 4K or 2M")->capture_default_str();
  cmd.add_option("--sweep-stride", cfg.sweep_stride, "PoD zero-check batch (one flush each)")
      ->capture_default_str()
      ->check(decimal_count());
  cmd.add_option("--sweep-limit", cfg.sweep_limit, "PoD emergency sweep scan limit")
      ->capture_default_str()
      ->check(decimal_count());
  cmd.add_option("--pod-reclaim", cfg.pod_reclaim,
                 "PoD reclaim rule: xen (4.7: zero-check the oldest recent page on every "
                 "populate, about one flush each) or batched (only when the cache is empty, "
                 "--sweep-stride pages per flush)")
      ->capture_default_str();
  cmd.add_option("--call-lock", cfg.call_lock,
                 "cross-call locking: global (one call lock, as Xen) or percpu (lock the targets)")
      ->capture_default_str();
  cmd.add_option("--fault-threads", cfg.fault_threads,
                 "threads serving userfaultfd (io_uring); 0 = one per pCPU, each acting as the "
                 "flush initiator for the pCPU whose fault it serves")
      ->capture_default_str()
      ->check(decimal_count());
  std::string classes;
  for (const auto& c : lock_classes()) classes += (classes.empty() ? "" : " ") + c;
  cmd.add_option("--lock", cfg.lock,
                 "lock strategy for every lock (ticket mcs clh ttas pthread spin-yield), or per "
                 "class: call=mcs,runq=ticket (classes: " +
                     classes + ")")
      ->capture_default_str();
  cmd.add_option("--lock-profile", f.lock_profile, "lock profiling: on or off")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd.add_option("--out", cfg.out, "record file (*.json) or directory for run-<time>.json")
      ->capture_default_str();
  cmd.add_flag("--json", cfg.json, "print only the JSON record on stdout (logs go to stderr)");
  cmd.add_flag("--force", f.force, "overwrite an existing --out FILE.json");
  cmd.add_flag("--console", cfg.echo_console, "echo guest console output to stderr");
}

void finish_run_flags(RunConfig& cfg, const RunFlags& f) {
  if (!f.guest.empty() && !cfg.guest_file.empty())
    throw ConfigError(
        "--guest-file runs one image in every VM; to mix it with --guest use "
        "--guest " +
        f.guest + ",file:" + cfg.guest_file);
  if (!f.guest.empty()) cfg.guest = f.guest;
  try {
    cfg.mem = parse_size(f.mem);
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("--mem: ") + e.what());
  }
  try {
    cfg.duration_ns = parse_duration_ns(f.duration);
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("--duration: ") + e.what());
  }
  cfg.lock_profile = f.lock_profile == "on";
  try {
    cfg.pod_granule = parse_size(f.pod_granule);
  } catch (const ConfigError& e) {
    throw ConfigError(std::string("--pod-granule: ") + e.what());
  }
  for (auto [flag, text, out] : {std::tuple{"--tslice", &f.tslice, &cfg.tslice_ns},
                                 std::tuple{"--ratelimit", &f.ratelimit, &cfg.ratelimit_ns}}) {
    try {
      *out = parse_duration_ns(*text);
    } catch (const ConfigError& e) {
      throw ConfigError(std::string(flag) + ": " + e.what());
    }
  }
  cfg.guest_args.clear();
  for (const auto& a : f.guest_args) {
    try {
      cfg.guest_args.push_back(parse_u64(a));
    } catch (const ConfigError& e) {
      throw ConfigError(std::string("--guest-arg: ") + e.what());
    }
  }
  cfg.validate();
}

std::vector<RunFlagInfo> run_flag_infos() {
  CLI::App app;
  RunConfig cfg;
  RunFlags f;
  add_run_flags(app, cfg, f);
  std::vector<RunFlagInfo> out;
  for (const CLI::Option* o : app.get_options()) {
    if (o->get_lnames().empty()) continue;
    const std::string name = o->get_lnames().front();
    if (name == "help" || name == "out" || name == "json" || name == "console" || name == "force")
      continue;
    out.push_back({name, o->get_expected_max() == 0, o->get_description()});  // flags expect 0
  }
  return out;
}

RunConfig parse_run_args(const std::vector<std::string>& args) {
  CLI::App app;
  RunConfig cfg;
  RunFlags f;
  add_run_flags(app, cfg, f);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 wants them reversed
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    throw ConfigError(e.what());
  }
  finish_run_flags(cfg, f);
  return cfg;
}

}  // namespace kvmscale::vmm
