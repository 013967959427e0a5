#include "bench/child_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <system_error>

#include "vmm/clock.hpp"

namespace kvmscale::bench {
namespace {

std::atomic<pid_t> running_child{0};
volatile sig_atomic_t stop_signal = 0;

void forward_signal(int sig) {
  stop_signal = sig;
  if (pid_t pid = running_child.load()) kill(-pid, sig);
}

uint64_t unix_now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

uint64_t timeval_ns(const timeval& tv) {
  return uint64_t(tv.tv_sec) * 1000000000ull + uint64_t(tv.tv_usec) * 1000ull;
}

// Forks a child that calls in_child() with its stdout and stderr on two pipes, collects both
// until they close or the deadline passes, and reaps it with its rusage.
ChildRun run_child(const std::function<void(int out_fd)>& in_child, uint64_t timeout_ns) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  if (pipe2(err, O_CLOEXEC) != 0) {
    int e = errno;
    close(out[0]);
    close(out[1]);
    throw std::system_error(e, std::generic_category(), "pipe");
  }
  std::fflush(nullptr);  // nothing buffered is written twice
  ChildRun r;
  r.start_unix_ns = unix_now_ns();
  r.start_ns = now_ns();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
    throw std::system_error(e, std::generic_category(), "fork");
  }
  if (pid == 0) {
    setpgid(0, 0);  // its own group: a timeout or a stop signal reaches all it started
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    dup2(out[1], 1);
    dup2(err[1], 2);
    in_child(1);
    _exit(127);  // in_child does not return
  }
  setpgid(pid, pid);  // also here: a signal right after fork must find the group
  running_child.store(pid);
  close(out[1]);
  close(err[1]);
  bool open_out = true, open_err = true;
  while (open_out || open_err) {
    uint64_t now = now_ns();
    if (now - r.start_ns >= timeout_ns) {
      r.timed_out = true;
      kill(-pid, SIGKILL);
      break;
    }
    pollfd fds[2] = {{open_out ? out[0] : -1, POLLIN, 0}, {open_err ? err[0] : -1, POLLIN, 0}};
    int wait_ms = int(std::min<uint64_t>(1000, (timeout_ns - (now - r.start_ns)) / 1000000 + 1));
    if (poll(fds, 2, wait_ms) < 0 && errno != EINTR) {
      std::perror("bench_scale: poll on a child's output");
      kill(-pid, SIGKILL);  // never leave it running: reaped below
      break;
    }
    char buf[65536];
    for (int i = 0; i < 2; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0)
        (i ? r.err : r.out).append(buf, size_t(n));
      else if (n == 0 || errno != EINTR)
        (i ? open_err : open_out) = false;
    }
  }
  close(out[0]);
  close(err[0]);
  int status = 0;
  while (wait4(pid, &status, 0, &r.usage) < 0 && errno == EINTR) {
  }
  r.end_ns = now_ns();
  running_child.store(0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace

uint64_t ChildRun::cpu_user_ns() const { return timeval_ns(usage.ru_utime); }
uint64_t ChildRun::cpu_sys_ns() const { return timeval_ns(usage.ru_stime); }

std::string ChildRun::last_error_line() const {
  size_t end = err.find_last_not_of("\n ");
  if (end == std::string::npos) return {};
  size_t begin = err.rfind('\n', end);
  begin = begin == std::string::npos ? 0 : begin + 1;
  begin = err.find_first_not_of(' ', begin);  // an indented detail line, e.g. kvmscale's limits
  return err.substr(begin, end + 1 - begin);
}

ChildRun run_program(const std::vector<std::string>& argv, uint64_t timeout_ns) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  return run_child(
      [&](int) {
        execv(args[0], args.data());
        std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
        _exit(127);
      },
      timeout_ns);
}

ChildRun run_forked(const std::function<int(int out_fd)>& body, uint64_t timeout_ns) {
  return run_child(
      [&](int out_fd) {
        int code = 1;
        try {
          code = body(out_fd);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "%s\n", e.what());
        }
        std::fflush(nullptr);
        _exit(code);  // no destructor or atexit handler of the parent's state runs here
      },
      timeout_ns);
}

void forward_stop_signals_to_children() {
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return stop_signal != 0; }

bool write_all(int fd, const std::string& text) {
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

}  // namespace kvmscale::bench
