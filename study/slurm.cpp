#include "study/slurm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "app/config.hpp"
#include "app/record.hpp"
#include "app/text.hpp"
#include "vmm/regular_file.hpp"

extern char** environ;

namespace kvmscale::study {

namespace fs = std::filesystem;
using app::ConfigError;

namespace {

// Single-quoted for bash, where nothing is expanded and only ' ends the word: a cell id, whatever
// bytes it holds, stays one word.
std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

bool has_control_byte(const std::string& s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// #SBATCH lines are split by sbatch itself at any blank (also \v, \f, \r; no shell quoting),
// and '%' is its file pattern char: such a path would not stay one value there.
void check_plain_path(const std::string& what, const std::string& path) {
  if (path.find_first_of(" \"'%\\") != std::string::npos || has_control_byte(path))
    throw ConfigError("--slurm: the " + what + " path '" + app::printable(path) +
                      "' holds a blank, control byte, quote, backslash or '%', which sbatch "
                      "scripts cannot carry");
}

}  // namespace

void check_sbatch_inputs(const std::string& dir, const std::string& exe, const SbatchOptions& o) {
  check_plain_path("--out", dir);
  check_plain_path("kvmscale", exe);
  for (const auto& a : o.args) {
    if (a.size() < 2 || a[0] != '-')
      throw ConfigError("--sbatch-arg '" + app::printable(a) +
                        "': not an sbatch option (e.g. --partition=big)");
    if (has_control_byte(a))
      throw ConfigError("--sbatch-arg '" + app::printable(a) +
                        "': holds a control byte (a newline would start another line)");
    if (a.rfind("--array", 0) == 0 || a.rfind("-a", 0) == 0)
      throw ConfigError("--sbatch-arg " + a + ": the array is kvmscale's (use --slurm-throttle)");
  }
}

std::string sbatch_script(const std::string& dir, const std::string& exe,
                          const std::vector<std::string>& cells, const std::string& digest,
                          const SbatchOptions& o) {
  if (cells.empty()) throw ConfigError("--slurm: no cell to submit");
  check_sbatch_inputs(dir, exe, o);
  std::ostringstream s;
  s << "#!/bin/bash\n"
    << "# kvmscale matrix " << dir << ": " << cells.size()
    << " runs not finished when submitted, one array task each.\n"
    << "# Collect: kvmscale matrix --collect --out " << dir << "\n"
    << "# Submit what is missing: kvmscale matrix --resume --slurm --out " << dir << "\n"
    << "#SBATCH --job-name=kvmscale-" << fs::path(dir).filename().string() << "\n"
    << "#SBATCH --array=0-" << cells.size() - 1;
  if (o.throttle) s << "%" << o.throttle;
  s << "\n"
    << "#SBATCH --ntasks=1\n"
    << "#SBATCH --output=" << dir << "/slurm/logs/%A_%a.out\n";
  for (const auto& a : o.args) s << "#SBATCH " << a << "\n";
  s << "set -euo pipefail\n"
    << "cells=(\n";
  for (const auto& c : cells) s << "  " << quoted(c) << "\n";
  s << ")\n"
    << "exec " << quoted(exe) << " matrix --cell \"${cells[$SLURM_ARRAY_TASK_ID]}\" --out "
    << quoted(dir) << " --matrix-digest " << quoted(digest) << "\n";
  return s.str();
}

ProgramResult run_program(const std::vector<std::string>& argv, const SlurmCall& call) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe: " + std::string(strerror(errno)));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    throw std::runtime_error("pipe: " + std::string(strerror(errno)));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  // Its own process group, so that a timeout stops whatever it started too; SIGINT/SIGTERM
  // unblocked and at their defaults, whatever the caller blocked.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, stops;
  sigemptyset(&none);
  sigemptyset(&stops);
  sigaddset(&stops, SIGINT);
  sigaddset(&stops, SIGTERM);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &stops);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    throw std::runtime_error(argv[0] + ": cannot run it (" + std::strerror(rc) + ")" +
                             (rc == ENOENT ? ": is Slurm's client installed and in PATH?" : ""));
  }
  ProgramResult r;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  const auto deadline = std::chrono::steady_clock::now() + call.timeout;
  auto why_stop = [&]() -> std::string {
    if (std::chrono::steady_clock::now() >= deadline)
      return " did not finish within " +
             app::format_duration(uint64_t(call.timeout.count()) * 1000000) +
             " (--slurm-timeout): stopped it and what it started";
    if (call.stop && call.stop())
      return ": interrupted (SIGINT/SIGTERM): stopped it and what it started";
    return {};
  };
  std::string stopped;
  while (open_fds > 0 && (stopped = why_stop()).empty()) {
    if (::poll(fds, 2, 100) < 0) {  // short waits: the deadline and a stop are seen in time
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, size_t(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        open_fds--;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  // It may run on with its output closed: the same bound holds for its end.
  int status = 0;
  while (stopped.empty()) {
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid || (w < 0 && errno != EINTR)) break;
    if ((stopped = why_stop()).empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!stopped.empty()) {
    ::kill(-pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    throw std::runtime_error(argv[0] + stopped);
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

namespace {

// DIR/slurm/jobs.txt ("" when there is none); ConfigError naming it when it is no regular file.
std::string jobs_file(const std::string& dir) {
  const std::string file = (fs::path(dir) / "slurm" / "jobs.txt").string();
  if (!vmm::path_exists(file)) return {};
  try {
    return vmm::read_regular_file(file);
  } catch (const vmm::FileError& e) {
    throw ConfigError(e.what());
  }
}

}  // namespace

std::vector<std::string> submitted_jobs(const std::string& dir) {
  std::vector<std::string> jobs;
  std::istringstream in(jobs_file(dir));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string id;
    if (words >> id) jobs.push_back(id);
  }
  return jobs;
}

std::vector<std::string> active_jobs(const std::vector<std::string>& jobs, const SlurmCall& call) {
  if (jobs.empty()) return {};
  // %F: the array's job id, for every task still pending or running (all users: ours are there).
  ProgramResult r = run_program({"squeue", "--noheader", "--array", "--format=%F"}, call);
  if (r.status != 0)
    throw std::runtime_error("squeue failed (" + std::to_string(r.status) + "): " + r.err);
  std::set<std::string> queued;
  std::istringstream words(r.out);
  for (std::string id; words >> id;) queued.insert(id);
  std::vector<std::string> active;
  for (const auto& j : jobs)
    if (queued.count(j)) active.push_back(j);
  return active;
}

Submission submit_cells(const std::string& dir, const std::string& exe,
                        const std::vector<std::string>& cells, const std::string& digest,
                        const SbatchOptions& o, bool submit) {
  const fs::path slurm = fs::path(dir) / "slurm";
  fs::create_directories(slurm / "logs");
  int n = 1;
  while (fs::exists(slurm / ("submit-" + std::to_string(n) + ".sbatch"))) n++;
  const std::string name = "submit-" + std::to_string(n) + ".sbatch";
  Submission sub;
  sub.script = (slurm / name).string();
  app::write_file_atomically(sub.script, sbatch_script(dir, exe, cells, digest, o));
  fs::permissions(sub.script, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
  if (!submit) return sub;
  ProgramResult r = run_program({"sbatch", "--parsable", sub.script}, o.call);
  if (r.status != 0)
    throw std::runtime_error("sbatch " + sub.script + " failed (exit " + std::to_string(r.status) +
                             "): " + r.err + r.out);
  // --parsable prints "<job id>[;<cluster>]".
  std::string id = r.out.substr(0, r.out.find_first_of(";\n"));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos)
    throw std::runtime_error("sbatch printed no job id: " + r.out);
  sub.job_id = id;
  std::string jobs = jobs_file(dir);
  jobs += id + " " + name + " " + std::to_string(cells.size()) + "\n";
  app::write_file_atomically((slurm / "jobs.txt").string(), jobs);
  return sub;
}

}  // namespace kvmscale::study
