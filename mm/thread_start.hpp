// Starting the run's host threads (VM creation workers, fault service, pCPUs, vCPUs) with an
// error that says which thread could not start and which limit to raise, instead of the bare
// "Resource temporarily unavailable" of std::system_error. Whoever starts several threads
// must, when one start fails, stop and join those already running before rethrowing.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

namespace kvmscale::mm {

struct ThreadStartError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Test hook: the start that finds this counter at 0 fails with EAGAIN, as under a pids limit;
// each start decrements it while it is positive. -1 (the default): never. Never set outside
// tests (app::TestHooks::fail_thread_start).
inline std::atomic<int> fail_thread_start_countdown{-1};

inline std::string thread_start_message(const std::string& what, int err) {
  std::string msg = "cannot start " + what + ": " + std::strerror(err);
  if (err == EAGAIN || err == ENOMEM)
    msg +=
        " (the limit on threads or memory: raise ulimit -u, the pids cgroup's pids.max or "
        "kernel.threads-max; each thread also needs a stack within ulimit -v; or use fewer "
        "pCPUs, vCPUs or --fault-threads)";
  return msg;
}

// Starts `fn` on a new thread; `what` names it in the error ("pCPU thread 3 of 8").
// Counts one start against the test hook; throws as under a pids limit when it says so.
inline void count_thread_start(const std::string& what) {
  int expected = fail_thread_start_countdown.load();
  while (expected >= 0 &&
         !fail_thread_start_countdown.compare_exchange_weak(expected, expected - 1)) {
  }
  if (expected == 0) throw ThreadStartError(thread_start_message(what, EAGAIN));
}

template <class F>
std::thread start_thread(const std::string& what, F&& fn) {
  count_thread_start(what);
  try {
    return std::thread(std::forward<F>(fn));
  } catch (const std::system_error& e) {
    throw ThreadStartError(thread_start_message(what, e.code().value()));
  }
}

}  // namespace kvmscale::mm
