// Scale benchmark (issue 13): per-VM launch, teardown and CPU cost of N 1-vCPU idle VMs as N
// grows, in one run, for
//   host:   kvmscale run --sched host
//   credit: kvmscale run --sched credit --pcpus <online CPUs>
//   bare:   a create+run loop on raw /dev/kvm ioctls (bench/bare_kvm.hpp), the baseline;
// each N and mode in a child process of its own. Ratios: kvmscale / bare at the same N, and
// each mode's launch cost at N / at the smallest N. With --notifier, what one mapping change
// (madvise(MADV_DONTNEED), munmap, mprotect of a populated page) costs a process holding M VMs,
// as a ratio to M = 0: the mmu-notifier fan-out behind populate-on-demand's reclaim cost.
// docs/scale.md explains the figures.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "app/config.hpp"
#include "app/record.hpp"
#include "bench/child_process.hpp"
#include "bench/scale_cells.hpp"
#include "vmm/backend.hpp"
#include "vmm/boot.hpp"

using namespace kvmscale;
using bench::Cell;
using nlohmann::json;

namespace {

constexpr uint64_t k2M = 2ull << 20;
const char* const kModes[] = {"host", "credit", "bare"};

// The smallest --mem kvmscale accepts: the guest layout's minimum, in whole 2M.
std::string smallest_guest_mem() {
  uint64_t mem = (vmm::kMinGuestMem + k2M - 1) / k2M * k2M;
  return std::to_string(mem >> 20) + "M";
}

// kvmscale beside the bench (build/bench/bench_scale -> build/kvmscale), or empty.
std::string find_kvmscale() {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  for (const fs::path& dir : {self.parent_path(), self.parent_path().parent_path()})
    if (fs::path p = dir / "kvmscale"; access(p.c_str(), X_OK) == 0) return p.string();
  return {};
}

std::string ms(double ns) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f ms", ns / 1e6);
  return b;
}

std::string times(double r) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2fx", r);
  return b;
}

// Ratio of two per-VM figures as JSON (null where either side is missing or zero).
json ratio(const Cell* a, const Cell* b, uint64_t Cell::*field) {
  if (!a || !b || !a->ok() || !b->ok() || b->*field == 0) return nullptr;
  return a->per_vm(a->*field) / b->per_vm(b->*field);
}
json ratio_cpu(const Cell* a, const Cell* b) {
  if (!a || !b || !a->ok() || !b->ok() || b->cpu_ns() == 0) return nullptr;
  return a->per_vm(a->cpu_ns()) / b->per_vm(b->cpu_ns());
}
std::string shown(const json& r) { return r.is_null() ? "-" : times(r.get<double>()); }

struct Size {
  uint32_t n;
  std::map<std::string, Cell> cells;
  const Cell* cell(const std::string& mode) const {
    auto it = cells.find(mode);
    return it == cells.end() ? nullptr : &it->second;
  }
};

// Launch per VM at each N over the same at the smallest N, per mode.
json launch_vs_smallest(const Size& s, const Size& smallest, const std::string& mode) {
  return ratio(s.cell(mode), smallest.cell(mode), &Cell::launch_ns);
}

void print_size(const Size& s, const Size& smallest) {
  std::printf("\nN = %u\n", s.n);
  std::printf("%-7s %13s %13s %13s %12s %14s %10s %11s%u\n", "mode", "launch/VM", "teardown/VM",
              "CPU/VM", "launch/bare", "teardown/bare", "CPU/bare", "launch/N=", smallest.n);
  const Cell* bare = s.cell("bare");
  for (const char* m : kModes) {
    const Cell* cell = s.cell(m);
    if (!cell) continue;
    const std::string mode = m;
    const Cell& c = *cell;
    if (!c.ok()) {
      std::printf("%-7s failed: %s\n", mode.c_str(), c.error.c_str());
      continue;
    }
    const bool base = mode == "bare";
    std::printf("%-7s %13s %13s %13s %12s %14s %10s %12s\n", mode.c_str(),
                ms(c.per_vm(c.launch_ns)).c_str(), ms(c.per_vm(c.teardown_ns)).c_str(),
                ms(c.per_vm(c.cpu_ns())).c_str(),
                base ? "" : shown(ratio(&c, bare, &Cell::launch_ns)).c_str(),
                base ? "" : shown(ratio(&c, bare, &Cell::teardown_ns)).c_str(),
                base ? "" : shown(ratio_cpu(&c, bare)).c_str(),
                shown(launch_vs_smallest(s, smallest, mode)).c_str());
  }
}

json size_json(const Size& s, const Size& smallest) {
  json cells = json::object(), vs_bare = json::object(), vs_smallest = json::object();
  const Cell* bare = s.cell("bare");
  for (const auto& [mode, c] : s.cells) {
    cells[mode] = c.to_json();
    vs_smallest[mode] = launch_vs_smallest(s, smallest, mode);
    if (mode != "bare")
      vs_bare[mode] = {{"launch", ratio(&c, bare, &Cell::launch_ns)},
                       {"teardown", ratio(&c, bare, &Cell::teardown_ns)},
                       {"cpu", ratio_cpu(&c, bare)}};
  }
  return {{"vms", s.n},
          {"cells", cells},
          {"per_vm_vs_bare", vs_bare},
          {"launch_per_vm_vs_smallest_n", vs_smallest}};
}

// Issue 13's targets, where the run has both N = 1,000 and N = 10,000.
json issue_targets(const std::vector<Size>& sizes) {
  const Size *k1 = nullptr, *k10 = nullptr;
  for (const Size& s : sizes) {
    if (s.n == 1000) k1 = &s;
    if (s.n == 10000) k10 = &s;
  }
  json t = json::object();
  if (!k1 || !k10) return t;
  for (const char* mode : {"host", "credit"}) {
    const Cell* big = k10->cell(mode);
    if (!big || !big->ok()) continue;
    json growth = ratio(big, k1->cell(mode), &Cell::launch_ns);
    t[mode] = {{"launch_per_vm_10000_vs_1000", growth},
               {"launch_target_met", !growth.is_null() && growth.get<double>() <= 1.5},
               {"teardown_10000_s", double(big->teardown_ns) / 1e9},
               {"teardown_target_met", big->teardown_ns <= 10ull * 1000000000ull}};
    std::printf(
        "issue 13 target, %s: launch/VM at 10000 vs 1000 = %s (<= 1.5x: %s), teardown "
        "of 10000 = %.1f s (<= 10 s: %s)\n",
        mode, shown(growth).c_str(), t[mode]["launch_target_met"].get<bool>() ? "met" : "NOT met",
        double(big->teardown_ns) / 1e9,
        t[mode]["teardown_target_met"].get<bool>() ? "met" : "NOT met");
  }
  return t;
}

json notifier_json_and_print(const std::vector<bench::NotifierRow>& rows, int reps) {
  std::printf(
      "\nmapping changes in a process holding M idle KVM VMs (median of %d calls each; each runs "
      "the mmu notifier of every VM of the process)\n",
      reps);
  std::printf("%7s %21s %8s %12s %8s %12s %8s %14s %8s\n", "M", "madvise(DONTNEED)", "vs M=0",
              "munmap", "vs M=0", "mprotect", "vs M=0", "uffd WP fence", "vs M=0");
  const bench::NotifierRow* zero = nullptr;
  for (const auto& r : rows)
    if (r.vms == 0) zero = &r;
  auto rel = [&](double v, double bench::MmCallCost::*f) -> json {
    if (!zero || zero->cost.*f <= 0) return nullptr;
    return v / (zero->cost.*f);
  };
  json out = json::array();
  for (const auto& r : rows) {
    json a = rel(r.cost.madvise_dontneed_ns, &bench::MmCallCost::madvise_dontneed_ns),
         b = rel(r.cost.munmap_ns, &bench::MmCallCost::munmap_ns),
         c = rel(r.cost.mprotect_ns, &bench::MmCallCost::mprotect_ns),
         d = rel(r.cost.uffd_writeprotect_ns, &bench::MmCallCost::uffd_writeprotect_ns);
    const bool wp = r.cost.uffd_writeprotect_ns > 0;  // 0: no userfaultfd write-protect here
    char fence[32] = "n/a";
    if (wp) std::snprintf(fence, sizeof fence, "%.2f us", r.cost.uffd_writeprotect_ns / 1e3);
    std::printf("%7u %18.2f us %8s %9.2f us %8s %9.2f us %8s %14s %8s\n", r.vms,
                r.cost.madvise_dontneed_ns / 1e3, shown(a).c_str(), r.cost.munmap_ns / 1e3,
                shown(b).c_str(), r.cost.mprotect_ns / 1e3, shown(c).c_str(), fence,
                shown(d).c_str());
    out.push_back(
        {{"vms", r.vms},
         {"madvise_dontneed_ns", r.cost.madvise_dontneed_ns},
         {"munmap_ns", r.cost.munmap_ns},
         {"mprotect_ns", r.cost.mprotect_ns},
         {"uffd_writeprotect_ns", wp ? json(r.cost.uffd_writeprotect_ns) : json()},
         {"vs_no_vms",
          {{"madvise_dontneed", a}, {"munmap", b}, {"mprotect", c}, {"uffd_writeprotect", d}}}});
  }
  return out;
}

// Usage errors: exit 2 with the message, before anything runs.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
void sort_unique(std::vector<T>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kvmscale scale benchmark (issue 13): per-VM launch, teardown and CPU of N 1-vCPU idle VMs "
      "under kvmscale --sched host and --sched credit, against a bare create+run loop at the "
      "same N, in one run; --notifier: cost of a mapping change vs VMs per process. "
      "docs/scale.md"};
  std::vector<uint32_t> sizes_n = {100, 1000, 5000, 10000};
  std::vector<uint32_t> notifier_vms = {0, 100, 1000, 5000};
  std::vector<std::string> modes = {"host", "credit", "bare"};
  bench::ScaleOptions o;
  o.mem = smallest_guest_mem();
  o.pcpus = uint32_t(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  bool quick = false, notifier = false;
  std::string bare_teardown = "exit", json_out;
  double timeout_s = 1800;
  int repeat = 1;
  app.add_option("--n", sizes_n, "VM counts, a comma list")->delimiter(',')->capture_default_str();
  app.add_option("--modes", modes, "which of host,credit,bare to run")
      ->delimiter(',')
      ->capture_default_str();
  app.add_flag("--quick", quick,
               "CI-sized smoke run: --n 20,100, --notifier with M = 0,20,100, 50 calls each");
  app.add_flag("--notifier", notifier, "also time mapping changes vs VMs held by the process");
  app.add_option("--notifier-vms", notifier_vms, "VM counts M of the notifier section")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--calls", o.mm_call_reps, "timed calls per kind and M (notifier section)")
      ->check(CLI::Range(10, 100000))
      ->capture_default_str();
  app.add_option("--kvmscale", o.kvmscale, "the kvmscale binary (default: beside this one)");
  app.add_option("--kvmscale-arg", o.kvmscale_args,
                 "one more argument for both kvmscale runs, e.g. --kvmscale-arg=--procs=4 "
                 "(repeatable)");
  app.add_option("--mem", o.mem, "--mem of the kvmscale guests (default: the smallest allowed)")
      ->capture_default_str();
  app.add_option("--duration", o.duration,
                 "--duration of the kvmscale runs; auto: 1 s + 3 ms per VM (time to boot them "
                 "all on a loaded host)")
      ->capture_default_str();
  app.add_option("--pcpus", o.pcpus, "--pcpus of the credit runs (default: online CPUs)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--bare-teardown", bare_teardown,
                 "exit: close the vCPU fds and let the process exit release the VMs; unmap: "
                 "munmap each kvm_run and close each fd while the others live")
      ->check(CLI::IsMember({"exit", "unmap"}))
      ->capture_default_str();
  app.add_option("--timeout", timeout_s, "seconds before a child process is killed")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  app.add_option("--repeat", repeat,
                 "measurements per N and mode, interleaved; each figure is their median")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--json", json_out, "also write the results as JSON to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  try {
    if (quick) {
      if (app.count("--n") == 0) sizes_n = {20, 100};
      notifier = true;
      if (app.count("--notifier-vms") == 0) notifier_vms = {0, 20, 100};
      if (app.count("--calls") == 0) o.mm_call_reps = 50;
    }
    sort_unique(sizes_n);
    sort_unique(notifier_vms);
    sort_unique(modes);
    std::sort(modes.begin(), modes.end(), [](const std::string& a, const std::string& b) {
      auto rank = [](const std::string& m) {
        return std::find(std::begin(kModes), std::end(kModes), m) - std::begin(kModes);
      };
      return rank(a) < rank(b);
    });
    for (const auto& m : modes)
      if (std::find(std::begin(kModes), std::end(kModes), m) == std::end(kModes))
        throw UsageError("--modes: '" + m + "' is not one of host, credit, bare");
    if (modes.empty()) throw UsageError("--modes: nothing to run");
    for (uint32_t n : sizes_n)
      if (n < 1 || n > 1000000) throw UsageError("--n: each count must be 1..1000000");
    if (sizes_n.empty()) throw UsageError("--n: no VM count given");
    for (uint32_t m : notifier_vms)
      if (m > 1000000) throw UsageError("--notifier-vms: each count must be 0..1000000");
    o.bare_unmap_teardown = bare_teardown == "unmap";
    o.timeout_ns = uint64_t(timeout_s * 1e9);
    try {
      app::parse_size(o.mem);
      if (o.duration != "auto") app::parse_duration_ns(o.duration);
    } catch (const std::exception& e) {
      throw UsageError(std::string("--mem/--duration: ") + e.what());
    }
    const bool runs_kvmscale = std::count(modes.begin(), modes.end(), "bare") < long(modes.size());
    if (runs_kvmscale) {
      if (o.kvmscale.empty()) o.kvmscale = find_kvmscale();
      if (o.kvmscale.empty())
        throw UsageError(
            "no kvmscale binary beside bench_scale (nor in its parent directory): pass "
            "--kvmscale PATH");
      if (access(o.kvmscale.c_str(), X_OK) != 0)
        throw UsageError("--kvmscale " + o.kvmscale + ": not an executable file");
    }
    // The bare loop and the notifier section hold one fd per VM in one process.
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    uint64_t bare_most = 0;
    if (std::count(modes.begin(), modes.end(), "bare")) bare_most = sizes_n.back();
    if (notifier && !notifier_vms.empty())
      bare_most = std::max<uint64_t>(bare_most, notifier_vms.back());
    if (bare_most + 64 > rl.rlim_max)
      throw UsageError("the bare loop holds one fd per VM: " + std::to_string(bare_most) +
                       " VMs need " + std::to_string(bare_most + 64) +
                       " fds but RLIMIT_NOFILE's hard limit is " + std::to_string(rl.rlim_max));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "bench_scale: %s\n", e.what());
    return 2;
  }

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) {
    std::fprintf(stderr, "bench_scale needs /dev/kvm: %s\n", std::strerror(errno));
    return 1;
  }
  close(kvm);  // the bench itself holds no VM: each measurement is a child's
  bench::forward_stop_signals_to_children();
  sigset_t stop;  // a parent (a test, a shell) may have left them blocked
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &stop, nullptr);

  // kvmscale's records (it writes one per run whatever --json says) go to a directory of ours.
  std::string records_template = (std::filesystem::temp_directory_path() / "bench_scale.XXXXXX");
  if (!mkdtemp(records_template.data())) {
    std::fprintf(stderr, "bench_scale: cannot create a temporary directory: %s\n",
                 std::strerror(errno));
    return 1;
  }
  o.records_dir = records_template;
  struct RemoveDir {
    std::string dir;
    ~RemoveDir() {  // each record is removed once read; a killed run may leave a temporary
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } remove_records{o.records_dir};

  const vmm::Backend backend = vmm::detect_backend();
  std::printf(
      "bench_scale: backend %s, %ld online CPUs; 1-vCPU idle VMs; kvmscale --mem %s --duration "
      "%s, credit --pcpus %u%s; per-VM figures (total / N)\n",
      vmm::backend_name(backend), sysconf(_SC_NPROCESSORS_ONLN), o.mem.c_str(), o.duration.c_str(),
      o.pcpus, o.kvmscale_args.empty() ? "" : ", extra kvmscale arguments");
  std::fflush(stdout);

  bool failed = false;
  std::vector<Size> sizes;
  std::map<std::string, std::string> teardown_sources;
  for (uint32_t n : sizes_n) {
    Size s{n, {}};
    std::map<std::string, std::vector<Cell>> runs;
    for (int r = 0; r < repeat && !bench::stop_requested(); r++)
      for (const auto& mode : modes) {  // interleaved: drift and load hit every mode alike
        if (bench::stop_requested()) break;
        std::fprintf(stderr, "bench_scale: %s, N = %u (%d/%d) ...\n", mode.c_str(), n, r + 1,
                     repeat);
        try {
          runs[mode].push_back(mode == "bare" ? bench::measure_bare(n, o)
                                              : bench::measure_kvmscale(mode, n, o));
        } catch (const std::exception& e) {  // e.g. a record of an unexpected shape
          Cell failed_cell;
          failed_cell.mode = mode;
          failed_cell.n = n;
          failed_cell.error = std::string("unexpected output: ") + e.what();
          runs[mode].push_back(failed_cell);
        }
      }
    for (auto& [mode, cells] : runs) {
      Cell c = bench::median_cell(cells);
      if (!c.ok()) failed = true;
      if (c.ok()) teardown_sources[mode] = c.teardown_source;
      s.cells.emplace(mode, std::move(c));
    }
    sizes.push_back(std::move(s));
    print_size(sizes.back(), sizes.front());
    std::fflush(stdout);
    if (bench::stop_requested()) break;
  }
  std::printf("\nlaunch: creation + boot of all N; CPU: the child's rusage (user + system)\n");
  for (const auto& [mode, src] : teardown_sources)
    std::printf("teardown, %s: %s\n", mode.c_str(), src.c_str());

  json result = {
      {"bench", "bench_scale"},
      {"host",
       {{"backend", vmm::backend_name(backend)}, {"online_cpus", sysconf(_SC_NPROCESSORS_ONLN)}}},
      {"settings",
       {{"guest", "idle"},
        {"vcpus", 1},
        {"mem", o.mem},
        {"duration", o.duration},
        {"credit_pcpus", o.pcpus},
        {"kvmscale", o.kvmscale},
        {"kvmscale_args", o.kvmscale_args},
        {"bare_teardown", bare_teardown},
        {"repeat", repeat}}},
      {"sizes", json::array()}};
  for (const Size& s : sizes) result["sizes"].push_back(size_json(s, sizes.front()));
  result["issue13_targets"] = issue_targets(sizes);

  if (notifier && !bench::stop_requested()) {
    std::fprintf(stderr, "bench_scale: notifier section ...\n");
    try {
      result["notifier"] =
          notifier_json_and_print(bench::measure_notifier(notifier_vms, o), o.mm_call_reps);
    } catch (const std::exception& e) {
      std::printf("\nnotifier section failed: %s\n", e.what());
      result["notifier_error"] = e.what();
      failed = true;
    }
  }
  if (bench::stop_requested()) {
    result["interrupted"] = true;
    std::printf("\ninterrupted: the figures above are what finished\n");
  }
  if (!json_out.empty()) {
    try {
      app::write_file_atomically(json_out, result.dump(2) + "\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_scale: writing %s: %s\n", json_out.c_str(), e.what());
      return 1;
    }
  }
  if (bench::stop_requested()) return 130;
  return failed ? 1 : 0;
}
