#include "bench/lock_bench.hpp"

// ck's headers are C. The only C++-invalid construct in the ones we include is assigning the void*
// from ck_pr_fas_ptr to a typed pointer (spinlock/mcs.h, clh.h, hclh.h); the wrapper below returns
// a value that converts to any object pointer, so ck's lock code compiles unchanged as C++ and
// still inlines into the harness.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#include <ck_pr.h>
namespace ck_cxx {
struct AnyPtr {
  void* p;
  template <typename T>
  operator T*() const {
    return static_cast<T*>(p);
  }
};
inline AnyPtr fas_ptr(void* target, void* v) { return {ck_pr_fas_ptr(target, v)}; }
}  // namespace ck_cxx
#define ck_pr_fas_ptr ck_cxx::fas_ptr
#include <ck_spinlock.h>
#undef ck_pr_fas_ptr
#pragma GCC diagnostic pop
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "locks/any_lock.hpp"
#include "locks/registry.hpp"
#include "mm/thread_start.hpp"

namespace kvmscale::bench {
namespace {

using locks::lock_clock_ns;

// A lock under test as the harness sees it: a factory of per-thread "acquire+release" handles.
// Each Subject owns one lock instance; Handle carries whatever per-thread node the algorithm needs.
struct Subject {
  virtual ~Subject() = default;
  virtual void lock(void* thread_state) = 0;
  virtual void unlock(void* thread_state) = 0;
  virtual void* new_thread_state() { return nullptr; }
  virtual void free_thread_state(void*) {}
};

template <typename L>
struct Ours final : Subject {
  L l;
  struct State {
    typename L::Node n;
  };
  void* new_thread_state() override { return new State; }
  void free_thread_state(void* s) override { delete static_cast<State*>(s); }
  void lock(void* s) override { l.lock(static_cast<State*>(s)->n); }
  void unlock(void* s) override { l.unlock(static_cast<State*>(s)->n); }
};

// kvmscale's run-time selected lock (what kvmscale itself uses), profiling off.
template <locks::Strategy S>
struct OursAny final : Subject {
  locks::AnyLock l{S};
  void* new_thread_state() override { return new locks::AnyLock::Node; }
  void free_thread_state(void* s) override { delete static_cast<locks::AnyLock::Node*>(s); }
  void lock(void* s) override { l.lock(*static_cast<locks::AnyLock::Node*>(s)); }
  void unlock(void* s) override { l.unlock(*static_cast<locks::AnyLock::Node*>(s)); }
};

struct CkTicket final : Subject {
  ck_spinlock_ticket_t l = CK_SPINLOCK_TICKET_INITIALIZER;
  void lock(void*) override { ck_spinlock_ticket_lock(&l); }
  void unlock(void*) override { ck_spinlock_ticket_unlock(&l); }
};

struct CkMcs final : Subject {
  ck_spinlock_mcs_t q = nullptr;  // ck_spinlock_mcs_t is a pointer type
  void* new_thread_state() override { return new ck_spinlock_mcs_context_t; }
  void free_thread_state(void* s) override { delete static_cast<ck_spinlock_mcs_context_t*>(s); }
  void lock(void* s) override {
    ck_spinlock_mcs_lock(&q, static_cast<ck_spinlock_mcs_context_t*>(s));
  }
  void unlock(void* s) override {
    ck_spinlock_mcs_unlock(&q, static_cast<ck_spinlock_mcs_context_t*>(s));
  }
};

// ck's CLH hands nodes along like ours: the thread's node pointer is swapped on unlock. Nodes
// migrate between threads, so they are owned here, not by the threads.
struct CkClh final : Subject {
  ck_spinlock_clh_t* q;
  std::mutex nodes_mu;
  std::vector<std::unique_ptr<ck_spinlock_clh_t>> nodes;
  CkClh() { ck_spinlock_clh_init(&q, node()); }
  ck_spinlock_clh_t* node() {
    std::lock_guard g(nodes_mu);
    nodes.push_back(std::make_unique<ck_spinlock_clh_t>());
    return nodes.back().get();
  }
  void* new_thread_state() override { return new ck_spinlock_clh_t*(node()); }
  void free_thread_state(void* s) override { delete static_cast<ck_spinlock_clh_t**>(s); }
  void lock(void* s) override { ck_spinlock_clh_lock(&q, *static_cast<ck_spinlock_clh_t**>(s)); }
  void unlock(void* s) override { ck_spinlock_clh_unlock(static_cast<ck_spinlock_clh_t**>(s)); }
};

// ck's closest analogue of TTAS with backoff: fetch-and-store with exponential backoff.
struct CkFasEb final : Subject {
  ck_spinlock_fas_t l = CK_SPINLOCK_FAS_INITIALIZER;
  void lock(void*) override { ck_spinlock_fas_lock_eb(&l); }
  void unlock(void*) override { ck_spinlock_fas_unlock(&l); }
};

struct StdMutex final : Subject {
  std::mutex m;
  void lock(void*) override { m.lock(); }
  void unlock(void*) override { m.unlock(); }
};

struct Throughput {
  double ops_per_s = 0, fairness = 0;  // fairness: max/min acquisitions per thread
};
template <typename T>
double uncontended_ns_of(T& s, uint64_t ops);
template <typename T>
Throughput throughput_of(T& s, int threads, int ms);
template <typename T>
double handoff_of(T& s, int handoffs);

// The measurements are templates over the concrete (final) subject so that calls inline: the
// harness adds no indirect call to either side of a comparison.
struct Entry {
  const char* name;
  const char* family;  // which algorithm: rows of one family are compared
  bool baseline;       // ck / std
  std::function<double(uint64_t)> uncontended;
  std::function<Throughput(int, int)> throughput;
  std::function<double(int)> handoff;
};

template <typename T>
Entry entry(const char* name, const char* family, bool baseline) {
  return {name,
          family,
          baseline,
          [](uint64_t ops) {
            T s;
            return uncontended_ns_of(s, ops);
          },
          [](int threads, int ms) {
            T s;
            return throughput_of(s, threads, ms);
          },
          [](int n) {
            T s;
            return handoff_of(s, n);
          }};
}

#if defined(__SANITIZE_THREAD__)
// ck's atomics are inline assembly, invisible to ThreadSanitizer: every ck lock would be reported
// as racy. Sanitizer builds compare our strategies with std::mutex only.
constexpr bool kWithCk = false;
#else
constexpr bool kWithCk = true;
#endif

const std::vector<Entry>& entries() {
  using S = locks::Strategy;
  static const std::vector<Entry> e = [] {
    std::vector<Entry> all = {
        entry<Ours<locks::TicketLock>>("ticket", "ticket", false),
        entry<OursAny<S::Ticket>>("any:ticket", "ticket", false),
        entry<CkTicket>("ck:ticket", "ticket", true),
        entry<Ours<locks::McsLock>>("mcs", "mcs", false),
        entry<OursAny<S::Mcs>>("any:mcs", "mcs", false),
        entry<CkMcs>("ck:mcs", "mcs", true),
        entry<Ours<locks::ClhLock>>("clh", "clh", false),
        entry<CkClh>("ck:clh", "clh", true),
        entry<Ours<locks::TtasLock>>("ttas", "ttas", false),
        entry<CkFasEb>("ck:fas-eb", "ttas", true),
        entry<Ours<locks::PthreadLock>>("pthread", "mutex", false),
        entry<Ours<locks::SpinYieldLock>>("spin-yield", "mutex", false),
        entry<StdMutex>("std::mutex", "mutex", true),
    };
    if (!kWithCk)
      std::erase_if(all, [](const Entry& x) { return std::string(x.name).rfind("ck:", 0) == 0; });
    return all;
  }();
  return e;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// ns per lock+unlock on one thread.
template <typename T>
double uncontended_ns_of(T& s, uint64_t ops) {
  void* st = s.new_thread_state();
  for (int i = 0; i < 1000; i++) {
    s.lock(st);
    s.unlock(st);
  }
  uint64_t t0 = lock_clock_ns();
  for (uint64_t i = 0; i < ops; i++) {
    s.lock(st);
    s.unlock(st);
  }
  double ns = double(lock_clock_ns() - t0) / double(ops);
  s.free_thread_state(st);
  return ns;
}

// `threads` threads hammer one lock for `ms`; the critical section bumps a shared counter.
template <typename T>
Throughput throughput_of(T& s, int threads, int ms) {
  std::atomic<bool> go{false}, stop{false};
  std::atomic<int> ready{0};
  std::vector<uint64_t> per(threads);
  uint64_t shared = 0;
  std::vector<std::thread> ts;
  // A thread that cannot start (ulimit -u, -v): those started are let go and joined first.
  auto start = [&](int t, auto fn) {
    try {
      ts.push_back(mm::start_thread(
          "bench-locks thread " + std::to_string(t + 1) + " of " + std::to_string(threads), fn));
    } catch (const mm::ThreadStartError&) {
      stop.store(true);
      go.store(true);
      for (auto& th : ts) th.join();
      throw;
    }
  };
  for (int t = 0; t < threads; t++)
    start(t, [&, t] {
      void* st = s.new_thread_state();
      ready++;
      while (!go.load()) std::this_thread::yield();
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        s.lock(st);
        shared++;
        s.unlock(st);
        n++;
      }
      per[t] = n;
      s.free_thread_state(st);
    });
  while (ready.load() < threads) std::this_thread::yield();
  uint64_t t0 = lock_clock_ns();
  go.store(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  stop.store(true);
  for (auto& t : ts) t.join();
  double secs = double(lock_clock_ns() - t0) / 1e9;
  uint64_t total = 0;
  for (uint64_t n : per) total += n;
  auto [mn, mx] = std::minmax_element(per.begin(), per.end());
  return {double(total) / secs, double(*mx) / double(std::max<uint64_t>(1, *mn))};
}

// Median ns from one thread's unlock to the waiting thread's return from lock().
template <typename T>
double handoff_of(T& s, int handoffs) {
  std::atomic<int> phase{0};  // 0: holder may take; 1: holder holds; 2: waiter is about to lock
  std::atomic<uint64_t> released_at{0};
  std::vector<double> samples;
  samples.reserve(handoffs);
  std::thread waiter = mm::start_thread("bench-locks handoff thread", [&] {
    void* st = s.new_thread_state();
    for (int i = 0; i < handoffs; i++) {
      while (phase.load() != 1) locks::cpu_relax();
      phase.store(2);
      s.lock(st);
      uint64_t now = lock_clock_ns();
      samples.push_back(double(now - released_at.load()));
      s.unlock(st);
      phase.store(0);
    }
    s.free_thread_state(st);
  });
  void* st = s.new_thread_state();
  for (int i = 0; i < handoffs; i++) {
    while (phase.load() != 0) locks::cpu_relax();
    s.lock(st);
    phase.store(1);
    while (phase.load() != 2) locks::cpu_relax();
    uint64_t spin_until = lock_clock_ns() + 2000;  // let the waiter get into lock()
    while (lock_clock_ns() < spin_until) locks::cpu_relax();
    released_at.store(lock_clock_ns());
    s.unlock(st);
  }
  waiter.join();
  s.free_thread_state(st);
  return median(samples);
}

bool selected(const LockBenchOptions& o, const Entry& e) {
  return o.only.empty() || std::find(o.only.begin(), o.only.end(), e.name) != o.only.end();
}

}  // namespace

std::vector<std::string> lock_bench_lock_names() {
  std::vector<std::string> v;
  for (const auto& e : entries()) v.emplace_back(e.name);
  return v;
}

nlohmann::json run_lock_bench(const LockBenchOptions& opt) {
  const int cores = std::max(1, int(sysconf(_SC_NPROCESSORS_ONLN)));
  std::vector<int> threads = opt.threads;
  if (threads.empty()) {
    for (int t = 1; t < 4 * cores; t *= 2) threads.push_back(t);
    threads.push_back(4 * cores);
  }
  std::vector<const Entry*> subjects;
  for (const auto& e : entries())
    if (selected(opt, e)) subjects.push_back(&e);

  // 1. Uncontended, interleaved repetitions. A second thread stays alive meanwhile: glibc skips
  // atomic instructions in pthread mutexes while a process is single-threaded, which would make
  // std::mutex look twice as fast as it is in any multi-threaded program such as kvmscale.
  std::map<std::string, std::vector<double>> unc;
  {
    std::mutex park;
    std::unique_lock hold(park);
    std::thread bystander =
        mm::start_thread("bench-locks bystander thread", [&] { std::lock_guard wait(park); });
    for (int r = 0; r < opt.reps; r++)
      for (const Entry* e : subjects) unc[e->name].push_back(e->uncontended(opt.uncontended_ops));
    hold.unlock();
    bystander.join();
  }
  nlohmann::json results = {{"host_cores", cores}, {"reps", opt.reps}};
  std::printf(
      "== uncontended acquire+release (median of %d, ns) and ratio to the ck/std baseline\n",
      opt.reps);
  auto baseline_of = [&](const Entry* e) -> const Entry* {
    for (const Entry* b : subjects)
      if (b->baseline && std::string(b->family) == e->family) return b;
    return nullptr;
  };
  for (const Entry* e : subjects) {
    double ns = median(unc[e->name]);
    const Entry* b = baseline_of(e);
    double ratio = b && b != e ? ns / median(unc[b->name]) : 1.0;
    std::printf("  %-12s %8.2f ns", e->name, ns);
    if (b && b != e) std::printf("   x%.3f vs %s", ratio, b->name);
    std::printf("\n");
    nlohmann::json row = {{"lock", e->name}, {"ns", ns}};
    if (b && b != e) {
      row["baseline"] = b->name;
      row["ratio"] = ratio;
    }
    results["uncontended"].push_back(row);
  }

  // 2. Throughput and fairness vs threads.
  std::printf("== throughput (Mops/s) and fairness (max/min per thread) vs threads, %d ms cells\n",
              opt.throughput_ms);
  std::printf("  %-12s", "lock");
  for (int t : threads) std::printf(" %11d thr", t);
  std::printf("\n");
  for (const Entry* e : subjects) {
    std::printf("  %-12s", e->name);
    for (int t : threads) {
      std::vector<double> ops, fair;
      for (int r = 0; r < std::max(1, opt.reps / 2); r++) {
        Throughput tp = e->throughput(t, opt.throughput_ms);
        ops.push_back(tp.ops_per_s);
        fair.push_back(tp.fairness);
      }
      double m = median(ops), f = median(fair);
      std::printf(" %7.3f/%-5.1f", m / 1e6, f);
      std::fflush(stdout);
      results["throughput"].push_back(
          {{"lock", e->name}, {"threads", t}, {"ops_per_s", m}, {"fairness_max_over_min", f}});
    }
    std::printf("\n");
  }

  // 3. Handoff latency between two threads.
  std::printf("== handoff latency, unlock -> waiter's lock() returns (median ns)\n");
  for (const Entry* e : subjects) {
    double ns = e->handoff(opt.handoffs);
    std::printf("  %-12s %10.0f ns\n", e->name, ns);
    results["handoff"].push_back({{"lock", e->name}, {"ns", ns}});
  }
  return results;
}

std::string lock_bench_csv(const nlohmann::json& r) {
  std::string out = "test,lock,threads,value,unit,extra\n";
  char line[256];
  for (const auto& u : r["uncontended"]) {
    std::snprintf(
        line, sizeof line, "uncontended,%s,1,%.3f,ns,%s\n", u["lock"].get<std::string>().c_str(),
        u["ns"].get<double>(),
        u.contains("ratio") ? ("ratio=" + std::to_string(u["ratio"].get<double>())).c_str() : "");
    out += line;
  }
  for (const auto& t : r["throughput"]) {
    std::snprintf(line, sizeof line, "throughput,%s,%d,%.0f,ops/s,fairness=%.3f\n",
                  t["lock"].get<std::string>().c_str(), t["threads"].get<int>(),
                  t["ops_per_s"].get<double>(), t["fairness_max_over_min"].get<double>());
    out += line;
  }
  for (const auto& h : r["handoff"]) {
    std::snprintf(line, sizeof line, "handoff,%s,2,%.1f,ns,\n",
                  h["lock"].get<std::string>().c_str(), h["ns"].get<double>());
    out += line;
  }
  return out;
}

}  // namespace kvmscale::bench
