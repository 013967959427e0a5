#include "app/cli.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>

#include "app/admission.hpp"
#include "app/config.hpp"
#include "app/host_info.hpp"
#include "app/procs.hpp"
#include "app/record.hpp"
#include "app/settings.hpp"
#include "app/testbed.hpp"
#include "app/text.hpp"
#include "vmm/clock.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/kick.hpp"
#include "vmm/kvm.hpp"

namespace kvmscale::app {

using namespace kvmscale::vmm;  // the KVM machine below
namespace {

// The `run` flags, generated from the settings table (app/settings.hpp). Values are taken as
// typed and read into the RunConfig afterwards, so that an error names the flag.
struct RunFlags {
  std::map<std::string, std::string> one;
  std::map<std::string, std::vector<std::string>> many;
  std::map<std::string, bool> set;
  std::map<std::string, CLI::Option*> options;
  bool force = false;  // overwrite an existing --out FILE.json
  bool given(const std::string& flag) const { return options.at(flag)->count() > 0; }
};

void add_run_flags(CLI::App& cmd, RunFlags& f) {
  using Arity = Setting::Arity;
  for (const Setting& s : run_settings()) {
    const std::string name = "--" + s.flag;
    CLI::Option* o = nullptr;
    switch (s.arity) {
      case Arity::One: o = cmd.add_option(name, f.one[s.flag], s.help); break;
      case Arity::Flag: o = cmd.add_flag(name, f.set[s.flag], s.help); break;
      case Arity::Repeated: o = cmd.add_option(name, f.many[s.flag], s.help); break;
      case Arity::CommaList:
        o = cmd.add_option(name, f.many[s.flag], s.help)->delimiter(',');
        break;
    }
    if (!s.default_text.empty()) o->default_str(s.default_text);
    if (s.arity != Arity::Flag) o->type_name(s.type_name);
    f.options[s.flag] = o;
  }
  cmd.add_flag("--force", f.force, "overwrite an existing --out FILE.json");
}

void finish_run_flags(RunConfig& cfg, const RunFlags& f) {
  if (f.given("guest") && f.given("guest-file"))
    throw ConfigError(
        "--guest-file runs one image in every VM; to mix it with --guest use "
        "--guest " +
        f.one.at("guest") + ",file:" + f.one.at("guest-file"));
  for (const Setting& s : run_settings()) {
    if (!f.given(s.flag)) continue;
    std::vector<std::string> values;
    switch (s.arity) {
      case Setting::Arity::One: values = {f.one.at(s.flag)}; break;
      case Setting::Arity::Flag: values = {f.set.at(s.flag) ? "true" : "false"}; break;
      default: values = f.many.at(s.flag); break;
    }
    try {
      s.parse(cfg, values);
    } catch (const ConfigError& e) {
      throw ConfigError("--" + s.flag + ": " + e.what());
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
  check_run_inputs(cfg);  // before check_output creates the directory: bad input writes nothing
  check_output(cfg, force);
  nlohmann::json record = run_planned(cfg);
  std::string path = record_path(cfg.out, record["run"]["started_unix_ns"].get<uint64_t>());
  std::string text = record.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  try {
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (!dir.empty()) std::filesystem::create_directories(dir);  // removed during the run?
    // Without --force a record someone else wrote meanwhile (another run with the same --out)
    // is kept: check_output's test before the run cannot see that.
    write_file_atomically(path, text, force);
  } catch (const std::exception& e) {
    // Never lose a finished run: the record goes to stdout instead.
    const auto* sys = dynamic_cast<const std::system_error*>(&e);
    const bool taken = sys && sys->code() == std::errc::file_exists;
    std::cerr << "kvmscale: could not write the record to " << path << ": " << e.what()
              << (taken ? " (another process wrote it during this run; --force overwrites)" : "")
              << "\nkvmscale: the record follows on stdout\n";
    std::cout << text << std::flush;
    return kExitFailure;
  }
  if (cfg.json) {
    std::cout << text << std::flush;
    std::cerr << "record: " << path << "\n";
  } else {
    std::cout << printable(summary_table(record) + "record: " + path + "\n", true) << std::flush;
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
  j["max_vms_by_nofile"] = vms_fitting_fds(h.nofile_hard, 1);
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
            << ") => at most ~" << vms_fitting_fds(h.nofile_hard, 1)
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

// A standard descriptor closed at start would be taken by the first file kvmscale opens (a
// record, /dev/kvm), and what goes to stdout would land in that file. Each is held by /dev/null
// opened read-only, so that writes to a closed stdout fail (EBADF) and are reported.
void hold_closed_standard_fds() {
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      const int held = ::open("/dev/null", O_RDONLY);  // the lowest free descriptor: fd
      if (held >= 0 && held != fd) ::close(held);
    }
}

// A reader that went away (`kvmscale ... | head -1`) makes writes fail with EPIPE instead of
// killing kvmscale mid-command (a run still writes its record, a matrix its cells);
// finish_stdout ends such a command quietly. A handler rather than SIG_IGN: programs kvmscale
// starts (gnuplot, sbatch) get the default action back at exec.
void on_sigpipe(int) {}
void catch_sigpipe() {
  struct sigaction sa {};
  sa.sa_handler = on_sigpipe;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGPIPE, &sa, nullptr);
}

// Every command's output to stdout is checked here, once: a write that failed (full disk,
// stdout closed) turns success into exit 1 with a message; a reader that went away (EPIPE), into
// exit 1 without one. The descriptor is closed to see errors a file system reports only then (NFS).
int finish_stdout(int rc) {
  errno = 0;
  std::cout.flush();  // std::cout writes through stdout (in sync with stdio): this is fflush
  int err = errno;
  bool failed = !std::cout || std::ferror(stdout);
  if (std::fflush(stdout) != 0) {
    failed = true;
    err = errno;
  }
  if (!failed && ::close(1) != 0 && errno != EINTR) {
    failed = true;
    err = errno;
  }
  if (!failed) return rc;
  // stdio drops the errno of a write that failed before this flush; the output is cut short
  // already, and one more byte says why.
  if (err == 0 && ::write(1, "\n", 1) < 0) err = errno;
  if (err != EPIPE) {
    const bool closed = (fcntl(1, F_GETFL) & O_ACCMODE) == O_RDONLY;  // held, or never writable
    std::cerr << "kvmscale: the output to stdout is incomplete: "
              << (closed ? "stdout is closed (or read-only)"
                  : err  ? std::strerror(err)
                         : "a write failed")
              << "\n";
  }
  return rc == kExitOk ? kExitFailure : rc;
}

}  // namespace

RunConfig parse_run_args(const std::vector<std::string>& args) {
  CLI::App app;
  RunConfig cfg;
  RunFlags f;
  add_run_flags(app, f);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 wants them reversed
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    throw ConfigError(e.what());
  }
  finish_run_flags(cfg, f);
  return cfg;
}

namespace {
int run_command(int argc, char** argv, const std::vector<Subcommand*>& more) {
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
  add_run_flags(*run, flags);
  bool info_json = false;
  CLI::App* info = app.add_subcommand("info", "backend, capabilities, host CPUs and limits");
  info->add_flag("--json", info_json, "print JSON");

  // A VMM process of a sharded run (app/procs.hpp); started by `run --procs`, not by people.
  std::string shard_record;
  CLI::App* shard = app.add_subcommand(kShardCommand, "")->group("");
  shard->add_option("--record", shard_record)->required();

  for (Subcommand* sub : more) sub->add_to(app);

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
    for (Subcommand* sub : more)
      if (int rc = sub->run_if_selected(); rc >= 0) return rc;
    install_kick_signal();
    block_stop_signals();
    if (*shard) return shard_child_main(shard_record);
    finish_run_flags(cfg, flags);
    return do_run(cfg, flags.force);
  } catch (const ConfigError& e) {
    std::cerr << "kvmscale: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "kvmscale: " << e.what() << "\n";
    return kExitFailure;
  }
}
}  // namespace

int cli_main(int argc, char** argv, const std::vector<Subcommand*>& more) {
  hold_closed_standard_fds();
  catch_sigpipe();
  // Messages quote flags, paths and record values: none may drive the terminal.
  PrintableStderr printable_stderr;
  return finish_stdout(run_command(argc, argv, more));
}

}  // namespace kvmscale::app
