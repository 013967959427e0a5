#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvm_helpers.hpp"
#include "vmm/clock.hpp"

namespace kvmscale::test {

Spawned spawn(const std::vector<std::string>& argv, int sigint_after_ms, int timeout_ms,
              bool sigint_ignored) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);  // its own group: a timeout kills whatever it left behind too
    dup2(out[1], 1);
    dup2(err[1], 2);
    if (sigint_ignored) signal(SIGINT, SIG_IGN);  // as a shell's background job inherits it
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  Spawned s;
  uint64_t start = now_ns();
  bool sent_int = false, open_out = true, open_err = true;
  while (open_out || open_err) {
    uint64_t elapsed_ms = (now_ns() - start) / 1000000;
    if (sigint_after_ms > 0 && !sent_int && elapsed_ms >= uint64_t(sigint_after_ms)) {
      kill(pid, SIGINT);
      sent_int = true;
    }
    if (elapsed_ms >= uint64_t(timeout_ms)) {
      kill(-pid, SIGKILL);  // e.g. bpftrace's -c child, orphaned when bpftrace fails to attach
      break;
    }
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    poll(fds, 2, 20);
    char buf[4096];
    for (int i = 0; i < 2; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0)
        (i ? s.err : s.out).append(buf, size_t(n));
      else
        (i ? open_err : open_out) = false;
    }
  }
  close(out[0]);
  close(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  s.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return s;
}

}  // namespace kvmscale::test
