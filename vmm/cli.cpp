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
#include "vmm/run_flags.hpp"
#include "vmm/testbed.hpp"

namespace kvmscale::vmm {
namespace {

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
            << format_size(h.mem_available) << " available\n";
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

// bench-locks' --json/--csv: usable before the benchmark runs, as run's --out (issue 12 item 10).
void check_bench_output(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  // Only regular files are replaced (a rename over /dev/null would replace the device).
  if (fs::exists(path, ec) && !fs::is_regular_file(path, ec))
    throw ConfigError(flag + " " + path + " exists and is not a regular file");
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir, ec))
    throw ConfigError(flag + ": '" + dir.string() + "' is not a directory");
  if (std::string why = output_dir_unusable(dir.string()); !why.empty())
    throw ConfigError(flag + ": " + why);
}

int do_bench_locks(bench::LockBenchOptions opt, bool quick, const std::string& json_out,
                   const std::string& csv_out) {
  check_bench_output(json_out, "--json");
  check_bench_output(csv_out, "--csv");
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
  int rc = kExitOk;
  // Never lose the results: what cannot be written goes to stdout.
  auto write = [&](const std::string& path, const std::string& text) {
    if (path.empty()) return;
    try {
      write_file_atomically(path, text);
    } catch (const std::exception& e) {
      std::cerr << "kvmscale: could not write " << path << ": " << e.what()
                << "\nkvmscale: its content follows on stdout\n";
      std::cout << text << std::flush;
      rc = kExitFailure;
    }
  };
  write(json_out, r.dump(2) + "\n");
  write(csv_out, bench::lock_bench_csv(r));
  return rc;
}

}  // namespace

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
