#include "app/testbed.hpp"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "app/admission.hpp"
#include "app/host_info.hpp"
#include "app/pod_runtime.hpp"
#include "app/record.hpp"
#include "locks/registry.hpp"
#include "mm/arena.hpp"
#include "mm/thread_start.hpp"
#include "sched/executor.hpp"
#include "vmm/clock.hpp"
#include "vmm/guest_images.hpp"
#include "vmm/kvm.hpp"
#include "vmm/run_area.hpp"

namespace kvmscale::app {

using namespace kvmscale::vmm;  // the KVM machine below
namespace {

sigset_t stop_signals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  return s;
}

bool stop_signal_pending() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGINT) || sigismember(&pending, SIGTERM);
}

// Waits up to `ns` for SIGINT/SIGTERM; true if one arrived (and consumes it).
bool wait_stop_signal(uint64_t ns) {
  sigset_t s = stop_signals();
  timespec ts{static_cast<time_t>(ns / 1000000000ull), static_cast<long>(ns % 1000000000ull)};
  return sigtimedwait(&s, nullptr, &ts) > 0;
}

uint64_t unix_now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Creates VMs on a few threads at once (creation is mostly kernel work). Stops early, leaving
// fewer VMs, if a stop signal is pending; rethrows the first creation error.
std::vector<std::unique_ptr<Vm>> create_vms(const RunConfig& cfg, const KvmSystem& kvm,
                                            Backend backend,
                                            const std::vector<std::span<const uint8_t>>& images,
                                            const mm::Arena& memory, int workers) {
  // A VMM child of a sharded run (--procs) builds its shard's VMs under their run-wide indices.
  const uint32_t count = cfg.shard_vms(), first = cfg.shard.first_vm;
  std::vector<std::unique_ptr<Vm>> vms(count);
  std::atomic<uint32_t> next{0};
  std::atomic<bool> abort{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto work = [&] {
    for (;;) {
      uint32_t i = next.fetch_add(1);
      if (i >= count || abort.load()) return;
      VmSpec spec;
      spec.index = first + i;
      spec.nr_vcpus = cfg.vcpus;
      spec.mem_size = cfg.mem;
      spec.image = images[(first + i) % images.size()];
      spec.guest_args = cfg.guest_args;
      spec.echo_console = cfg.echo_console;
      try {
        // kvm_run pages are mapped once all VMs exist: KVM_CREATE_VM's notifier registration
        // walks every mapping of the process (mm_take_all_locks), so mapping them now would make
        // creation O(VMs) per VM.
        vms[i] = std::make_unique<Vm>(kvm, backend, spec, VmPlacement{memory.slot(i), true});
      } catch (...) {
        std::lock_guard lock(error_mu);
        if (!error) error = std::current_exception();
        abort.store(true);
      }
      if (stop_signal_pending()) abort.store(true);
    }
  };
  std::vector<std::thread> threads;
  try {
    for (int w = 1; w < workers; w++)
      threads.push_back(mm::start_thread(
          "VM creation worker " + std::to_string(w) + " of " + std::to_string(workers - 1), work));
  } catch (...) {
    abort.store(true);
    for (auto& t : threads) t.join();
    throw;
  }
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
  std::erase(vms, nullptr);  // interrupted: keep what was built
  return vms;
}

// The software TLBs of every context (pCPU, or vCPU thread with --sched host), after stop().
nlohmann::json tlb_stats(sched::Executor& ex) {
  uint64_t hits = 0, misses = 0, stale = 0;
  std::vector<uint64_t> flushes;
  for (uint32_t c = 0; c < ex.contexts(); c++) {
    const mm::SoftTlb& t = ex.tlb(c);
    hits += t.hits();
    misses += t.misses();
    stale += t.stale_hits();
    flushes.push_back(t.flushes());
  }
  return {{"entries_per_context", mm::SoftTlb::kEntries},
          {"hits", hits},
          {"misses", misses},
          {"stale_hits", stale},
          {"flushes_received", flushes}};
}

// The run's phases (docs/run-record.md). Boot ends when the last VM has booted (null if some
// never did).
nlohmann::json phases_json(const nlohmann::json& record, const RunTiming& t, uint64_t teardown_ns) {
  nlohmann::json boot;
  const auto& s = record["summary"];
  if (s["vms"] != 0 && s["vms_booted"] == s["vms"] && s.contains("boot_ns"))
    boot = s["boot_ns"]["max"];
  return {{"create_ns", t.created_ns - t.create_start_ns},
          {"setup_ns", t.exec_start_ns - t.created_ns},
          {"boot_ns", boot},
          {"run_ns", t.end_ns - t.exec_start_ns},
          {"teardown_ns", teardown_ns}};
}

nlohmann::json resources_json(const ResourceSample& before, const ResourceSample& created,
                              const ResourceSample& running, const ResourceSample& at_end,
                              const ResourceSample& after) {
  auto drop = [&](uint64_t avail) {
    return before.mem_available > avail ? before.mem_available - avail : 0;
  };
  return {{"peak_rss_bytes", after.peak_rss},
          {"threads_peak", std::max({running.threads, at_end.threads, created.threads})},
          {"cpu_user_ns", after.cpu_user_ns - before.cpu_user_ns},
          {"cpu_sys_ns", after.cpu_sys_ns - before.cpu_sys_ns},
          {"cpu_create_ns",
           (created.cpu_user_ns + created.cpu_sys_ns) - (before.cpu_user_ns + before.cpu_sys_ns)},
          {"cpu_teardown_ns",
           (after.cpu_user_ns + after.cpu_sys_ns) - (at_end.cpu_user_ns + at_end.cpu_sys_ns)},
          {"mem_available_before", before.mem_available},
          {"mem_available_created", created.mem_available},
          {"mem_available_min_running",
           running.mem_available ? running.mem_available : at_end.mem_available},
          {"mem_available_after", after.mem_available},
          {"mem_used_created", drop(created.mem_available)},
          {"mem_used_peak",
           drop(std::min(running.mem_available ? running.mem_available : at_end.mem_available,
                         at_end.mem_available))}};
}

}  // namespace

void block_stop_signals() {
  // An ignored signal is discarded when sent, even while blocked: a SIGINT inherited as ignored
  // (a background job) would never reach sigtimedwait. Restore the default first.
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
  sigset_t s = stop_signals();
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
}

std::vector<uint8_t> read_guest_file(const std::string& path) {
  try {
    return load_guest_file(path);
  } catch (const GuestImageError& e) {
    throw ConfigError(e.what());
  }
}

nlohmann::json run_testbed(const RunConfig& cfg) { return run_testbed_with_hooks(cfg, {}); }

nlohmann::json run_testbed_with_hooks(const RunConfig& cfg, const TestHooks& hooks) {
  cfg.validate();
  struct ThreadStartHook {
    explicit ThreadStartHook(int k) { mm::fail_thread_start_countdown.store(k); }
    ~ThreadStartHook() { mm::fail_thread_start_countdown.store(-1); }
  } thread_start_hook(hooks.fail_thread_start);
  RunTiming t;
  t.started_unix_ns = unix_now_ns();

  // One image per entry of the guest list; VM i runs images[i % size]. Files are read first:
  // a bad --guest-file is a usage error whatever the host has.
  std::list<std::vector<uint8_t>> file_images;  // stable addresses for the spans below
  std::vector<std::span<const uint8_t>> images;
  for (const auto& g : cfg.guest_list()) {
    if (g.rfind("file:", 0) == 0) {
      images.emplace_back(file_images.emplace_back(read_guest_file(g.substr(5))));
      continue;
    }
    images.push_back(builtin_guest_image(g));
    if (images.back().empty()) throw RunError("guest '" + g + "' is not embedded in this build");
  }

  std::unique_ptr<KvmSystem> kvm;
  try {
    kvm = std::make_unique<KvmSystem>();
  } catch (const KvmError& e) {
    throw RunError(std::string("kvmscale run needs a usable /dev/kvm: ") + e.what());
  }
  HostInfo host = probe_host(kvm.get());
  std::vector<uint64_t> image_sizes;
  for (const auto& image : images) image_sizes.push_back(image.size());
  LimitCheck limits = check_limits(host, cfg, image_sizes);
  if (!limits.errors.empty()) {
    std::string msg = "this host cannot hold the run:";
    for (const auto& e : limits.errors) msg += "\n  " + e;
    throw RunError(msg);
  }

  for (const auto& w : cfg.ineffective_settings()) limits.warnings.push_back(w);
  locks::LockPolicy lock_policy = locks::LockPolicy::parse(cfg.lock, lock_classes());
  if (cfg.sched != "host" && cfg.effective_pcpus() >= uint32_t(host.online_cpus)) {
    for (const char* cls : {"runq", "sched"}) {
      locks::Strategy st = lock_policy.for_class(cls);
      if (st == locks::Strategy::Ticket || st == locks::Strategy::Mcs ||
          st == locks::Strategy::Clh) {
        limits.warnings.push_back(
            std::string("FIFO spinlock '") + locks::strategy_name(st) + "' for the " + cls +
            " locks with as many pCPU threads as host CPUs: waiters that get preempted stall "
            "everyone behind them (docs/locks.md); --lock spin-yield avoids it");
        break;
      }
    }
  }
  lock_policy.profile = cfg.lock_profile;
  locks::LockRegistry lock_registry(lock_policy);

  // Declared before the VMs, so that they go after them: the VMs' memory and kvm_run pages
  // live in these shared areas (teardown, below).
  std::optional<mm::Arena> guest_memory;
  std::optional<RunArea> run_pages;
  mm::settle_malloc_mappings();
  const ResourceSample before = sample_resources();
  t.create_start_ns = now_ns();
  std::vector<std::unique_ptr<Vm>> vms;
  try {
    guest_memory.emplace(cfg.shard_vms(), cfg.mem, "guest memory");
    vms = create_vms(cfg, *kvm, host.backend, images, *guest_memory,
                     std::clamp(host.online_cpus, 1, kCreationWorkers));
    run_pages.emplace(vms.size() * cfg.vcpus, kvm->vcpu_mmap_size());
    for (size_t i = 0; i < vms.size(); i++) vms[i]->map_runs(*run_pages, i * cfg.vcpus);
  } catch (const std::exception& e) {
    throw RunError(std::string("creating VMs failed: ") + e.what());
  }
  t.created_ns = now_ns();
  const ResourceSample created = sample_resources();
  ResourceSample running{};
  std::vector<Vm*> vm_ptrs;
  for (auto& vm : vms) vm_ptrs.push_back(vm.get());
  nlohmann::json numa_placement = nlohmann::json::array();
  if (cfg.numa) {
    // Each VM's memory goes to the nodes of the host CPUs its vCPUs' pCPUs are bound to. vCPUs
    // and pCPUs are numbered run-wide; an unpinned vCPU may run on any pCPU of its pool (this
    // process's, under --procs).
    std::vector<int> host_cpus = sched::bound_host_cpus(cfg.effective_pcpus());
    uint32_t k = cfg.shard.first_vm * cfg.vcpus;
    for (Vm* vm : vm_ptrs) {
      std::vector<int> nodes;
      for (uint32_t i = 0; i < vm->nr_vcpus(); i++, k++) {
        std::vector<uint32_t> pins = cfg.pin_of(k);
        if (pins.empty())
          for (uint32_t p = 0; p < cfg.shard_pcpus(); p++) pins.push_back(cfg.shard.first_pcpu + p);
        for (uint32_t p : pins) nodes.push_back(sched::node_of_host_cpu(host_cpus[p]));
      }
      std::sort(nodes.begin(), nodes.end());
      nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
      std::string err = vm->memory().bind_to_nodes(nodes);
      if (!err.empty()) limits.warnings.push_back("vm" + std::to_string(vm->index()) + ": " + err);
      numa_placement.push_back({{"vm", vm->index()}, {"nodes", nodes}, {"ok", err.empty()}});
    }
  }

  EndReason end = EndReason::AllExited;
  nlohmann::json sched_report = nlohmann::json::object(), tlb_report = nlohmann::json::object();
  nlohmann::json pod_report;
  std::map<uint32_t, nlohmann::json> pod_vm_reports;
  t.exec_start_ns = now_ns();
  if (vms.size() < cfg.shard_vms()) {
    end = EndReason::Interrupted;
  } else {
    std::unique_ptr<sched::Executor> executor;
    std::unique_ptr<PodRuntime> pod;
    // On every way out of this block, exceptions included: the vCPUs stop (their exit handlers
    // populate through the PoD runtime), then the PoD runtime goes (its fault threads and the
    // VMs' p2m attachments point into the executor), then the executor. Both steps are no-ops
    // where the normal path already took them.
    struct TearDownInOrder {
      std::unique_ptr<sched::Executor>& executor;
      std::unique_ptr<PodRuntime>& pod;
      ~TearDownInOrder() {
        if (executor) executor->stop();
        pod.reset();
      }
    } tear_down{executor, pod};
    if (cfg.sched == "host") {
      executor = sched::make_host_executor(vm_ptrs);
    } else {
      sched::PcpuOptions o;
      o.npcpus = cfg.shard_pcpus();
      o.bind = cfg.pcpu_bind;
      o.first_pcpu = cfg.shard.first_pcpu;
      o.params.tslice_ns = cfg.tslice_ns;
      o.params.ratelimit_ns = cfg.ratelimit_ns;
      o.params.migration_delay_ns = cfg.migration_delay_ns;
      o.params.round_robin = cfg.sched == "rr";
      sched::parse_balance(cfg.balance, o.params.balance);
      o.weight_of = [&](uint32_t vm) { return cfg.weight_of(vm); };
      o.cap_of = [&](uint32_t vm) { return cfg.cap_of(vm); };
      // k counts this process's vCPUs; pins name run-wide pCPUs, which a shard's pool numbers
      // from its first (app/procs.cpp refuses pins into another pool).
      o.affinity_of = [&](uint32_t k) {
        auto pins = cfg.pin_of(cfg.shard.first_vm * cfg.vcpus + k);
        if (pins.empty()) return sched::CpuSet(o.npcpus, true);
        return sched::CpuSet::single(o.npcpus, pins[0] - cfg.shard.first_pcpu);
      };
      executor = sched::make_pcpu_executor(vm_ptrs, o, lock_registry);
    }
    if (!cfg.pod_target.empty()) {
      try {
        pod = std::make_unique<PodRuntime>(cfg, vm_ptrs, *executor, lock_registry,
                                           hooks.skip_flushes, !hooks.fault_reads_off);
      } catch (const std::exception& e) {
        throw RunError(std::string("populate-on-demand set-up failed: ") + e.what());
      }
    }
    t.exec_start_ns = now_ns();
    try {
      executor->start();  // none of its threads left running if it throws
    } catch (const std::exception& e) {
      throw RunError(std::string("starting the run failed: ") + e.what());
    }
    const uint64_t deadline = t.exec_start_ns + cfg.duration_ns;
    uint64_t last_sample = 0;
    for (;;) {
      uint64_t now = now_ns();
      if (executor->all_done()) break;
      if (now >= deadline) {
        end = EndReason::Duration;
        break;
      }
      if (std::any_of(vm_ptrs.begin(), vm_ptrs.end(),
                      [](const Vm* vm) { return vm->failed_on_host(); }))
        break;  // reported below
      if (pod && !pod->faults_served(now)) {
        // The vCPUs would wait for their faults to the end and the record would look like a
        // slow boot (issue 12: "booted 0", exit 0 under a pids limit).
        throw RunError(
            "guest page faults are not being served: one has waited unread for 1 s with no fault "
            "thread busy (the kernel could not start io_uring's worker thread for the "
            "userfaultfd reads? raise ulimit -u or the pids cgroup's pids.max)");
      }
      if (hooks.fail_while_running) throw std::runtime_error("test hook: failing while running");
      if (now - last_sample >= 100000000) {  // threads and memory while running, 10 Hz
        ResourceSample r = sample_resources();
        running.threads = std::max(running.threads, r.threads);
        if (running.mem_available == 0 || r.mem_available < running.mem_available)
          running.mem_available = r.mem_available;
        last_sample = now;
      }
      if (wait_stop_signal(std::min<uint64_t>(2000000, deadline - now))) {
        end = EndReason::Interrupted;
        break;
      }
    }
    executor->stop();
    for (const Vm* vm : vm_ptrs)
      if (std::string err = vm->host_error(); !err.empty())
        throw RunError("the run failed: " + err);
    sched_report = executor->report();
    uint64_t double_runs = 0;  // a vCPU entered by two threads at once: must stay 0
    for (const Vm* vm : vm_ptrs) double_runs += vm->double_runs();
    sched_report["double_runs"] = double_runs;
    tlb_report = tlb_stats(*executor);
    if (pod) {
      // Stop the fault service while the executor it calls into still exists, then collect.
      pod->stop();
      pod_report = pod->report();
      for (Vm* vm : vm_ptrs) pod_vm_reports[vm->index()] = pod->vm_report(*vm);
      pod.reset();
    }
  }
  t.end_ns = now_ns();

  std::vector<const Vm*> cvms(vm_ptrs.begin(), vm_ptrs.end());
  nlohmann::json record = make_run_record(cfg, host, cvms, t, end, limits.warnings);
  record["locks"] = lock_registry.report();
  record["sched"] = sched_report;
  record["tlb"] = tlb_report;
  if (!pod_vm_reports.empty()) {
    record["cross_calls"] = pod_report;
    for (auto& vmr : record["vms"]) vmr["pod"] = pod_vm_reports[vmr["index"].get<uint32_t>()];
  }
  if (cfg.numa) record["numa_placement"] = numa_placement;

  // Teardown: close every vCPU fd (the VMs live on in their kvm_run pages), then unmap those
  // pages a chunk at a time on many threads, which destroys the VMs with no per-VM unmap while
  // others live, then the guest memory in one unmap (docs/scale.md).
  const ResourceSample at_end = sample_resources();
  const uint64_t teardown_start = now_ns();
  cvms.clear();
  vm_ptrs.clear();
  vms.clear();
  run_pages.reset();
  guest_memory.reset();
  const uint64_t teardown_ns = now_ns() - teardown_start;
  const ResourceSample after = sample_resources();
  record["run"]["phases"] = phases_json(record, t, teardown_ns);
  record["run"]["resources"] = resources_json(before, created, running, at_end, after);
  record["run"]["admission"] = {{"memory_needed", limits.memory_needed},
                                {"assumptions", limits.assumptions}};
  return record;
}

}  // namespace kvmscale::app
