#include "vmm/cli.hpp"

#include <linux/userfaultfd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "bench/lock_bench.hpp"
#include "study/study_cli.hpp"
#include "vmm/clock.hpp"
#include "vmm/config.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/host_info.hpp"
#include "vmm/kick.hpp"
#include "vmm/kvm.hpp"
#include "vmm/record.hpp"
#include "vmm/testbed.hpp"

namespace kvmscale::vmm {
namespace {

// Flags as typed, before unit parsing: so that the error names the flag.
struct RunFlags {
  std::string mem = "16M", duration = "30s", lock_profile = "on", tslice = "30ms",
              ratelimit = "1ms", pod_granule = "4K";
  std::vector<std::string> guest_args;
  bool force = false;  // overwrite an existing --out FILE.json
  std::string guest;   // empty: not given
};

void add_run_flags(CLI::App& cmd, RunConfig& cfg, RunFlags& f) {
  cmd.add_option("--vms", cfg.vms, "number of VMs")->capture_default_str();
  cmd.add_option("--vcpus", cfg.vcpus, "vCPUs per VM (1-64)")->capture_default_str();
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
  cmd.add_option("--pcpus", cfg.pcpus, "pCPU threads for credit/rr (default: host online CPUs)");
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
  cmd.add_option("--weight", cfg.weight, "credit weight of every VM")->capture_default_str();
  cmd.add_option("--cap", cfg.cap, "credit cap of every VM, % of one pCPU (0 = none)")
      ->capture_default_str();
  cmd.add_option("--vm", cfg.vm_opts,
                 "per-VM settings, e.g. vm0:weight=512 or vm1:cap=50,weight=128");
  cmd.add_option("--pod-target", cfg.pod_target,
                 "populate-on-demand: the free RAM a VM may have populated, SIZE or PERCENT "
                 "(e.g. 50%); zero pages are reclaimed over it (default: fully populated)");
  cmd.add_option("--pod-granule", f.pod_granule, "PoD granule: 4K or 2M")->capture_default_str();
  cmd.add_option("--sweep-stride", cfg.sweep_stride, "PoD zero-check batch (one flush each)")
      ->capture_default_str();
  cmd.add_option("--sweep-limit", cfg.sweep_limit, "PoD emergency sweep scan limit")
      ->capture_default_str();
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
      ->capture_default_str();
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

// Where the record will go must be usable before the run starts, not found out after it.
void check_output(const RunConfig& cfg, bool force) {
  namespace fs = std::filesystem;
  const bool file = cfg.out.size() > 5 && cfg.out.ends_with(".json");
  fs::path dir = file ? fs::path(cfg.out).parent_path() : fs::path(cfg.out);
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (file && fs::exists(cfg.out, ec) && !force)
    throw ConfigError("--out " + cfg.out + " exists; use --force to overwrite it");
  if (file && fs::is_directory(cfg.out, ec))
    throw ConfigError("--out " + cfg.out + " is a directory");
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir, ec))
    throw ConfigError("--out: cannot use '" + dir.string() + "' as a directory" +
                      (ec ? ": " + ec.message() : std::string()));
  std::string why = output_dir_unusable(dir.string());
  if (!why.empty()) throw ConfigError("--out: " + why);
}

int do_run(const RunConfig& cfg, bool force) {
  check_output(cfg, force);
  nlohmann::json record = run_testbed(cfg);
  std::string path = record_path(cfg.out, record["run"]["started_unix_ns"].get<uint64_t>());
  std::string text = record.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  try {
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (!dir.empty()) std::filesystem::create_directories(dir);  // removed during the run?
    write_file_atomically(path, text);
  } catch (const std::exception& e) {
    // Never lose a finished run: the record goes to stdout instead.
    std::cerr << "kvmscale: could not write the record to " << path << ": " << e.what()
              << "\nkvmscale: the record follows on stdout\n";
    std::cout << text << std::flush;
    return kExitFailure;
  }
  if (cfg.json) {
    std::cout << text << std::flush;
    std::cerr << "record: " << path << "\n";
  } else {
    std::cout << summary_table(record) << "record: " << path << "\n" << std::flush;
  }
  return record["run"]["interrupted"].get<bool>() ? kExitInterrupted : kExitOk;
}

std::string to_hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(v));
  return b;
}

int do_info(bool json) {
  std::unique_ptr<KvmSystem> kvm;
  std::string kvm_error;
  try {
    kvm = std::make_unique<KvmSystem>();
  } catch (const KvmError& e) {
    kvm_error = e.what();
  }
  HostInfo h = probe_host(kvm.get());
  nlohmann::json j = h.to_json();
  j["kvmscale_version"] = version_string();
  j["guests"] = embedded_guest_names();
  j["max_vms_by_nofile"] = h.nofile_hard / fds_per_vm(1);
  if (!kvm_error.empty()) j["kvm_error"] = kvm_error;
  if (json) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "kvmscale " << version_string() << "\n"
            << "host:     " << h.kernel << ", " << h.cpu_model << "\n"
            << "cpus:     " << h.online_cpus << " online, " << h.numa_nodes << " NUMA node(s)\n"
            << "memory:   " << format_size(h.mem_total) << " total, "
            << format_size(h.mem_available) << " available\n"
            << "cpu:      microcode " << (h.microcode.empty() ? "unknown" : h.microcode) << ", SMT "
            << (h.smt_active < 0 ? "unknown"
                : h.smt_active   ? "on"
                                 : "off")
            << ", " << (h.threads_per_core ? std::to_string(h.threads_per_core) : "?")
            << " thread(s) per core\n";
  for (const NumaNode& n : h.numa)
    std::cout << "node " << n.node << ":   cpus " << (n.cpus.empty() ? "none" : n.cpus) << ", "
              << format_size(n.mem_total) << "\n";
  for (const auto& [module, params] : h.kvm_params) {
    std::cout << module << ":";
    for (const auto& [name, value] : params) std::cout << " " << name << "=" << value;
    std::cout << "\n";
  }
  if (kvm) {
    std::cout << "kvm:      /dev/kvm API " << h.kvm_api_version << ", backend "
              << backend_name(h.backend);
    if (h.backend == Backend::Pvm)
      std::cout << " (software virtualization: guests need the VIF page to run natively; exits "
                   "cost ~25us)";
    std::cout << "\ncaps:    ";
    for (const auto& [k, v] : h.kvm_caps) std::cout << " " << k << "=" << v;
    std::cout << "\n";
  } else {
    std::cout << "kvm:      unavailable (" << kvm_error << ")\n";
  }
  std::cout << "limits:   open files " << h.nofile_soft << " (hard " << h.nofile_hard
            << ") => at most ~" << h.nofile_hard / fds_per_vm(1)
            << " 1-vCPU VMs per process; threads-max " << h.threads_max << ", max_map_count "
            << h.max_map_count << "\n"
            << "uffd:     "
            << (h.uffd_features < 0 ? std::string("unavailable")
                                    : "features 0x" + to_hex(uint64_t(h.uffd_features)) +
                                          ((h.uffd_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
                                               ? " (write-protect: yes)"
                                               : " (write-protect: no)"))
            << "\n"
            << "guests:  ";
  for (const auto& g : embedded_guest_names()) std::cout << " " << g;
  std::cout << "\n";
  return kExitOk;
}

int do_bench_locks(bench::LockBenchOptions opt, bool quick, const std::string& json_out,
                   const std::string& csv_out) {
  if (quick) {
    opt.reps = 3;
    opt.uncontended_ops = 500000;
    opt.throughput_ms = 50;
    opt.handoffs = 300;
  }
  auto known = bench::lock_bench_lock_names();
  for (const auto& n : opt.only)
    if (std::find(known.begin(), known.end(), n) == known.end())
      throw ConfigError("--locks: unknown lock '" + n + "'");
  nlohmann::json r = bench::run_lock_bench(opt);
  if (!json_out.empty()) write_file_atomically(json_out, r.dump(2) + "\n");
  if (!csv_out.empty()) write_file_atomically(csv_out, bench::lock_bench_csv(r));
  return kExitOk;
}

}  // namespace

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

int cli_main(int argc, char** argv) {
  CLI::App app{"kvmscale: a scalability testbed for virtualization platforms on /dev/kvm"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  kvmscale info\n"
      "  kvmscale run                                   # 4 VMs x 2 vCPUs booting boot-zero\n"
      "  kvmscale run --vms 64 --vcpus 2 --mem 16M --guest boot-zero --json\n"
      "  kvmscale run --guest spin --vms 2 --duration 5s --out results/spin.json\n"
      "  kvmscale run --guest hello --console\n"
      "  kvmscale run --sched credit --pcpus 2 --guest spin --vms 4 --vcpu-pin 1:1 --balance "
      "affinity --duration 5s\n"
      "  kvmscale run --sched credit --pcpus 1 --guest spin --vms 2 --vm vm0:weight=512\n"
      "  kvmscale bench-locks --csv locks.csv\n"
      "  kvmscale matrix --vms 1,2,4 --lock ticket,mcs --call-lock global,percpu --pod-target 50% "
      "--repeat 3 --out results/m1\n"
      "  kvmscale compare results/m1/cells/<a>.json results/m2\n"
      "  kvmscale scenario call-lock\n"
      "  kvmscale scenario credit-balance --repeat 5\n"
      "Exit codes: 0 ok, 1 run failed, 2 bad usage, 130 interrupted (record still written).");

  RunConfig cfg;
  RunFlags flags;
  CLI::App* run = app.add_subcommand("run", "launch VMs, run them, write a run record");
  add_run_flags(*run, cfg, flags);
  bool info_json = false;
  CLI::App* info = app.add_subcommand("info", "backend, capabilities, host CPUs and limits");
  info->add_flag("--json", info_json, "print JSON");

  study::StudyCommands study_cmds;
  study::add_study_commands(app, study_cmds);

  bench::LockBenchOptions lb;
  bool lb_quick = false;
  std::string lb_json, lb_csv;
  CLI::App* bl =
      app.add_subcommand("bench-locks",
                         "lock strategies vs Concurrency Kit and std::mutex: latency, throughput, "
                         "fairness, handoff (ratios measured in one run)");
  bl->add_option("--reps", lb.reps, "interleaved repetitions (medians)")->check(CLI::Range(1, 50));
  bl->add_option("--threads", lb.threads, "thread counts, e.g. 1,2,8 (default 1,2,4.. 4x cores)")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096));
  bl->add_option("--ms", lb.throughput_ms, "duration of one throughput cell (ms)")
      ->check(CLI::Range(10, 60000));
  bl->add_option("--locks", lb.only, "only these (e.g. ticket,ck:ticket,mcs,ck:mcs)")
      ->delimiter(',');
  bl->add_flag("--quick", lb_quick, "short run (for smoke tests)");
  bl->add_option("--json", lb_json, "write results as JSON");
  bl->add_option("--csv", lb_csv, "write results as CSV");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    // "kvmscale nosuchcmd": CLI11 only says a subcommand is required; name the unknown word.
    if (argc > 1 && argv[1][0] != '-' && app.get_subcommands().empty()) {
      std::string cmds;
      for (const CLI::App* sub : app.get_subcommands({})) cmds += " " + sub->get_name();
      what = std::string("unknown command '") + argv[1] + "' (commands:" + cmds + ")";
    }
    std::cerr << "kvmscale: " << what << "\nRun 'kvmscale --help' for usage.\n";
    return kExitUsage;
  }

  try {
    if (*info) return do_info(info_json);
    if (*bl) return do_bench_locks(lb, lb_quick, lb_json, lb_csv);
    if (int rc = study::run_study_command(study_cmds); rc >= 0) return rc;
    finish_run_flags(cfg, flags);
    install_kick_signal();
    block_stop_signals();
    return do_run(cfg, flags.force);
  } catch (const ConfigError& e) {
    std::cerr << "kvmscale: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "kvmscale: " << e.what() << "\n";
    return kExitFailure;
  }
}

}  // namespace kvmscale::vmm
