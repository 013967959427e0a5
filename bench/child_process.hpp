// Child processes for bench_scale: every measurement runs in a process of its own, so that each
// has a fresh mm (the VMs of one measurement do not tax the next) and its own rusage.
#pragma once

#include <sys/resource.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvmscale::bench {

struct ChildRun {
  int exit_code = -1;  // 128 + signal when killed by one
  bool timed_out = false;
  uint64_t start_ns = 0;       // CLOCK_MONOTONIC just before fork
  uint64_t start_unix_ns = 0;  // CLOCK_REALTIME at the same moment
  uint64_t end_ns = 0;         // CLOCK_MONOTONIC once reaped
  rusage usage{};              // of the child and the children it waited for (wait4)
  std::string out, err;

  uint64_t cpu_user_ns() const;
  uint64_t cpu_sys_ns() const;
  uint64_t max_rss_bytes() const { return uint64_t(usage.ru_maxrss) * 1024; }
  // The last non-empty line of stderr: what a failed child said last.
  std::string last_error_line() const;
};

// Runs argv[0] (a path) with stdout and stderr captured, in its own process group; SIGKILLs the
// group after timeout_ns.
ChildRun run_program(const std::vector<std::string>& argv, uint64_t timeout_ns);

// Runs body in a forked child; what it writes to out_fd is ChildRun::out, its return value the
// exit status; an exception is printed to stderr and exits 1. The caller must be
// single-threaded (fork).
ChildRun run_forked(const std::function<int(int out_fd)>& body, uint64_t timeout_ns);

// SIGINT/SIGTERM to the bench go on to the running child's group; true once one arrived.
void forward_stop_signals_to_children();
bool stop_requested();

// Writes all of text to fd (a pipe); false on error.
bool write_all(int fd, const std::string& text);

}  // namespace kvmscale::bench
